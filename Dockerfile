# The controller image: the binary, with the built-in probes compiled to
# WebAssembly and embedded, on a distroless non-root base.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# Without the default `local` feature: no test or demo support in the image.
RUN cargo build --release --locked -p workspace-culler --no-default-features \
 && install -D target/release/workspace-culler /out/workspace-culler

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/workspace-culler /usr/local/bin/workspace-culler
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/workspace-culler"]
CMD ["controller"]
