// Renders /api/v1/openapi.json as a plain page: one card per operation, then the schemas.
// Text only goes through textContent, never innerHTML.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.enum) return schema.enum.join(" | ");
  return schema.type || "";
}

function security(op, doc) {
  const list = op.security !== undefined ? op.security : doc.security || [];
  if (list.length === 0) return "none";
  // An empty requirement ({}) is the alternative of sending no credential at all.
  return list.map((s) => Object.keys(s).join(" + ") || "none").join(" or ");
}

function operationCard(path, method, op, doc) {
  const card = el("article", null, "card operation");
  card.id = op.operationId || method + path;
  const head = el("h2");
  head.append(el("span", method.toUpperCase(), "method"), " ", el("code", path));
  card.append(head, el("p", op.summary || ""));
  if (op.description) card.append(el("p", op.description));
  card.append(el("p", "Credential: " + security(op, doc), "security"));
  if (op.parameters && op.parameters.length) {
    const table = el("table");
    const header = el("tr");
    for (const h of ["parameter", "in", "required", "schema", "meaning"]) header.append(el("th", h));
    table.append(header);
    for (const p of op.parameters) {
      const row = el("tr");
      row.append(el("td", p.name), el("td", p.in), el("td", p.required ? "yes" : "no"),
        el("td", schemaName(p.schema)), el("td", p.description || ""));
      table.append(row);
    }
    card.append(table);
  }
  if (op.requestBody) {
    const content = op.requestBody.content || {};
    const types = Object.keys(content).map((t) => t + " " + schemaName(content[t].schema));
    card.append(el("p", "Body: " + types.join(", ") + " - " + (op.requestBody.description || "")));
  }
  const answers = el("ul", null, "responses");
  for (const [status, r] of Object.entries(op.responses || {})) {
    const content = r.content || {};
    const schemas = Object.values(content).map((c) => schemaName(c.schema)).filter(Boolean);
    const item = el("li");
    item.append(el("code", status), " " + (r.description || "") +
      (schemas.length ? " (" + schemas.join(", ") + ")" : ""));
    answers.append(item);
  }
  card.append(answers);
  return card;
}

async function render() {
  const response = await fetch("/api/v1/openapi.json");
  const doc = await response.json();
  document.getElementById("api-title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("api-description").textContent = doc.info.description || "";
  const operations = document.getElementById("operations");
  for (const path of Object.keys(doc.paths).sort()) {
    for (const [method, op] of Object.entries(doc.paths[path])) {
      operations.append(operationCard(path, method, op, doc));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const name of Object.keys(doc.components.schemas).sort()) {
    const details = el("details");
    details.id = "schema-" + name;
    details.append(el("summary", name),
      el("pre", JSON.stringify(doc.components.schemas[name], null, 2)));
    schemas.append(details);
  }
  document.body.dataset.ready = "true";
}

render().catch((err) => {
  document.getElementById("operations").append(el("p", "Cannot load the document: " + err, "error"));
});
