//! Prints the YAML of every Ferry CRD: `cargo run -p ferry-protocol --bin crdgen > deploy/crds.yaml`.

fn main() {
    print!("{}", ferry_protocol::crd::render_yaml());
}
