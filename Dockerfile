# opencti-stream-exporter as an OpenCTI connector container.
#
#   docker build -t opencti-stream-exporter .
#   docker run --rm -v exporter-state:/var/lib/opencti-stream-exporter \
#     -e OPENCTI_URL=http://opencti:8080 -e OPENCTI_TOKEN=... \
#     -e CONNECTOR_LIVE_STREAM_ID=... -e MINIO_ENDPOINT=minio -e MINIO_PORT=9000 \
#     -e MINIO_BUCKET=opencti-export -e MINIO_FOLDER=opencti-stream \
#     -e MINIO_ACCESS_KEY=... -e MINIO_SECRET_KEY=... opencti-stream-exporter
#
# It reads the reference stream-exporter's environment variables: OPENCTI_URL,
# OPENCTI_TOKEN, OPENCTI_SSL_VERIFY, CONNECTOR_ID, CONNECTOR_NAME,
# CONNECTOR_SCOPE, CONNECTOR_CONFIDENCE_LEVEL, CONNECTOR_LOG_LEVEL,
# CONNECTOR_CONSUMER_COUNT, CONNECTOR_LIVE_STREAM_ID,
# CONNECTOR_LIVE_STREAM_START_TIMESTAMP, CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE,
# CONNECTOR_LIVE_STREAM_LISTEN_DELETE, CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES,
# CONNECTOR_LIVE_STREAM_WITH_INFERENCES, MINIO_ENDPOINT, MINIO_PORT,
# MINIO_BUCKET, MINIO_FOLDER, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_SECURE,
# MINIO_CERT_CHECK, WRITE_EVERY_SEC, QUEUE_SIZE, and OPENCTI_JSON_LOGGING (JSON
# logs unless `false`, as pycti). Every other key of config.example.yml has a
# variable too (`opencti-stream-exporter --help`, man page ENVIRONMENT). A
# config file can be mounted and named with OPENCTI_STREAM_EXPORTER_CONFIG.
#
# The state (cursor, file count) lives on the volume /var/lib/opencti-stream-exporter:
# keep it. Losing it means starting over with a snapshot.

ARG RUST_VERSION=1.89

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# No debug information in the image; the binary is the only thing copied out.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=true
RUN cargo build --release --locked -p opencti-stream-exporter --bin opencti-stream-exporter

FROM docker.io/library/debian:bookworm-slim AS runtime
# TLS roots are built into the binary (webpki-roots); a private CA is given
# with OPENCTI_CA_FILE / MINIO_CA_FILE, mounted read-only.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home \
       --home-dir /var/lib/opencti-stream-exporter --shell /usr/sbin/nologin exporter \
    && mkdir -p /var/lib/opencti-stream-exporter \
    && chown exporter:exporter /var/lib/opencti-stream-exporter \
    && chmod 0700 /var/lib/opencti-stream-exporter
COPY --from=build /src/target/release/opencti-stream-exporter /usr/local/bin/opencti-stream-exporter
ENV STATE_PATH=/var/lib/opencti-stream-exporter/opencti-stream-exporter.state.json
VOLUME ["/var/lib/opencti-stream-exporter"]
WORKDIR /var/lib/opencti-stream-exporter
USER 10001:10001
# Metrics, when CONNECTOR_EXPOSE_METRICS=true (CONNECTOR_METRICS_PORT).
EXPOSE 9095
# SIGTERM stores and commits what was received, then exits 0: give it time
# (docker stop -t 60, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/opencti-stream-exporter"]
CMD ["run"]
