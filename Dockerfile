# The one image of Ferry: the controller (`ferry controller`), the node agent (`ferry agent`) and
# the CLI are the same binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry && cp target/release/ferry /ferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /ferry /usr/local/bin/ferry
ENTRYPOINT ["/usr/local/bin/ferry"]
