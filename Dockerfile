# The one image of Ferry: the controller (`ferry controller`), the node agent (`ferry agent`) and
# the CLI are the same binary.
#
# By default the binary is built here, in a Rust image. FERRY_BINARY=host takes a `ferry` built on
# the host instead, from the build context's top directory (no Rust image needed):
#   docker build --build-arg FERRY_BINARY=host -f Dockerfile <directory holding ferry>
# which is what tests/env/ferry-image does for the test node, without docker.
ARG FERRY_BINARY=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry && cp target/release/ferry /ferry

FROM scratch AS host
COPY ferry /ferry

FROM ${FERRY_BINARY} AS binary

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=binary /ferry /usr/local/bin/ferry
ENTRYPOINT ["/usr/local/bin/ferry"]
