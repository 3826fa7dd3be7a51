# The monitor's image: worker, relay, rules/dashboards generators and the traffic simulator.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 mlmon \
    && mkdir -p /var/lib/mlmon && chown mlmon /var/lib/mlmon

USER mlmon
WORKDIR /var/lib/mlmon
ENTRYPOINT ["monitor"]
CMD ["--help"]
