# The govbus binary (all agents) in a slim image.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p govbus

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/govbus /usr/local/bin/govbus
COPY deploy /etc/govbus/deploy
COPY schemas /etc/govbus/schemas
WORKDIR /var/lib/govbus
ENTRYPOINT ["govbus"]
