# One Dockerfile for the three homeedge roles: gateway, cloud and device simulators. Each image
# installs only its role's extra (build argument ROLE, set per service in docker-compose.yml), so
# the gateway image carries no scikit-learn, SciPy, plotly, alembic or asyncpg. The command
# chooses the role too; they are the same commands the tests run.
FROM python:3.11-slim

ARG ROLE=gateway
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY gateway ./gateway
COPY cloud ./cloud
COPY devices ./devices
RUN pip install ".[${ROLE}]" && useradd --system --create-home homeedge && mkdir -p /data \
    && chown homeedge /data

USER homeedge
WORKDIR /data
CMD ["python", "-m", "gateway", "--help"]
