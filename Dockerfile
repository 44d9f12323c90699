# One image for the three homeedge roles: gateway, cloud and device simulators.
# The command chooses the role (see docker-compose.yml); they are the same commands the tests run.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY gateway ./gateway
COPY cloud ./cloud
COPY devices ./devices
RUN pip install . && useradd --system --create-home homeedge && mkdir -p /data \
    && chown homeedge /data

USER homeedge
WORKDIR /data
CMD ["python", "-m", "gateway", "--help"]
