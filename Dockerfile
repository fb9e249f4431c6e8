# Two stages: build the release binary, then run it on a slim image without a toolchain.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# librdkafka (feature kafka) builds with cmake and wants the curl header.
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin surge --features kafka,mongo

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/surge --create-home surge
COPY --from=build /src/target/release/surge /usr/local/bin/surge
USER surge
WORKDIR /var/lib/surge
ENV SURGE_HTTP_ADDR=0.0.0.0:8080
# Open files: an image cannot set a limit, the runtime does (compose: `ulimits: nofile`, docker
# run: `--ulimit nofile=65536:65536`). At start the node raises its soft limit to the hard one
# and keeps SURGE_MAX_CONNECTIONS 256 below it.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/surge"]
CMD ["serve"]
