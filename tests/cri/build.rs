// Generates the CRI runtime.v1 client from proto/api.proto (k8s.io/cri-api, Apache-2.0),
// with the protoc shipped by the protoc-bin-vendored crate (no system protoc needed).
fn main() {
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().unwrap()) };
    tonic_prost_build::configure()
        .build_server(false)
        // Serialize: JSON output. Deserialize: the PodSandboxConfig that containerd returns in
        // PodSandboxStatus's verbose info (Go JSON, same snake_case names, empty fields omitted).
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(&["proto/api.proto"], &["proto"])
        .unwrap();
    println!("cargo:rerun-if-changed=proto/api.proto");
}
