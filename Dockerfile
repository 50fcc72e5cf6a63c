# syntax=docker/dockerfile:1
#
# postwire container image.
#   docker build -t postwire:local .
#   docker run --rm postwire:local migrate
#   docker run --rm -p 8080:8080 postwire:local serve --role api
# Requires BuildKit (the default builder since Docker Engine 23 and in `docker compose`).

ARG RUST_VERSION=1

# ---------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder

# native-tls links against the system OpenSSL.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# sqlx compile-time macros never reach a database during the image build:
# query!() checks use the committed .sqlx/ data (`cargo sqlx prepare`) if any.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# The whole (filtered, see .dockerignore) context: src/, migrations/ (embedded
# by sqlx::migrate! at compile time), .sqlx/, build.rs, ... whatever exists.
COPY . .

# Dependency caching: BuildKit cache mounts keep the cargo registry and the
# target dir between builds, so only changed crates are recompiled. target/ is
# a cache mount (not part of the layer), so the binary is copied out in the
# same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked --bin postwire \
 && cp target/release/postwire /usr/local/bin/postwire

# ---------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# libssl3 + ca-certificates for native-tls (SMTP STARTTLS/TLS, Postgres TLS);
# curl only for the container healthcheck (GET /readyz).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 postwire \
 && useradd --system --uid 10001 --gid postwire --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin postwire

WORKDIR /app

COPY --from=builder /usr/local/bin/postwire /usr/local/bin/postwire
# Read as ./config/default.toml (+ ./config/$POSTWIRE_ENV.toml) from WORKDIR.
COPY config/ ./config/

# Listen on all interfaces inside the container; everything else comes from
# config/ and POSTWIRE__SECTION__KEY overrides at run time.
ENV POSTWIRE__SERVER__HOST=0.0.0.0 \
    POSTWIRE__SERVER__PORT=8080

USER 10001:10001

EXPOSE 8080

ENTRYPOINT ["postwire"]
CMD ["serve"]
