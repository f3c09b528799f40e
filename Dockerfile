# syntax=docker/dockerfile:1
# Build stage: the same install a clean venv gets in CI (tests/test_packaging.py runs it).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir '.[compression]'

# Runtime stage: no compilers, no sources, a non-root user, the cache on a volume.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home proxy \
 && mkdir -p /var/cache/gitlab-pypi-proxy \
 && chown proxy /var/cache/gitlab-pypi-proxy
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    GITLAB_PYPI_PROXY_SERVER_LISTEN=0.0.0.0:8080 \
    GITLAB_PYPI_PROXY_CACHE_DIR=/var/cache/gitlab-pypi-proxy
USER proxy
VOLUME ["/var/cache/gitlab-pypi-proxy"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/-/health', timeout=4)"]
ENTRYPOINT ["gitlab-pypi-proxy"]
CMD ["serve"]
