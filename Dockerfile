# The govbus binary (all agents) in a slim image, run as an unprivileged
# user. The Rust image's version is the workspace's rust-version (a test,
# crates/govbus/tests/toolchain.rs, keeps them and the lockfile in
# agreement).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p govbus

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 govbus \
    && useradd --system --uid 10001 --gid govbus --home-dir /var/lib/govbus --shell /usr/sbin/nologin govbus \
    && mkdir -p /var/lib/govbus \
    && chown govbus:govbus /var/lib/govbus
COPY --from=build /src/target/release/govbus /usr/local/bin/govbus
COPY deploy /etc/govbus/deploy
COPY schemas /etc/govbus/schemas
USER 10001:10001
WORKDIR /var/lib/govbus
ENTRYPOINT ["govbus"]
