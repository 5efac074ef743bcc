# syntax=docker/dockerfile:1
#
# Build:  docker build -t sluice .
# Run (io_uring; Docker >= 25 blocks io_uring in its default seccomp profile):
#   docker run --security-opt seccomp=docker/seccomp-io_uring.json -p 8080:8080 \
#     sluice -t TOKEN --paths ... -o https://upstream.example
# Run without the profile and sluice falls back to epoll.

# ---- build stage -------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder
WORKDIR /src

# Copy the whole context (.dockerignore keeps target/ and .git out). No stub
# crate / `cargo fetch` layer: cargo refuses a manifest whose [[bench]] (or
# other target) files are missing, so copying everything is what stays correct.
COPY . .

# Dependency caching: the cache mounts (BuildKit, the default builder since
# Docker 23) keep the crates.io downloads and the compiled dependencies between
# builds. Our own crate is cleaned first so it is always rebuilt from the copied
# sources, never judged "fresh" from file timestamps. The binary is copied out
# of the cache mount in the same step, because the mount is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo clean --release --package sluice \
 && cargo build --release --locked --bin sluice \
 && install -m 0755 target/release/sluice /usr/local/bin/sluice

# ---- runtime stage -----------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --no-create-home --shell /usr/sbin/nologin sluice \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/sluice

COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice

USER 10001:10001
# The default --data-dir (./sluice-data) is relative to this directory: keep it on a volume so
# promised jobs survive the container (docker run -v sluice-data:/var/lib/sluice ...).
WORKDIR /var/lib/sluice
VOLUME /var/lib/sluice
# SIGTERM drains gracefully (--shutdown-grace, 30 s): use docker stop --time / --stop-timeout
# above it.
STOPSIGNAL SIGTERM
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
