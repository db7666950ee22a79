//! Compiles `proto/` with protox (no system `protoc`), keeping extension options such as
//! `google.api.http` in the encoded descriptor set used by server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("kubeconfig/v1/kubeconfig.proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file(&file)?;
    let encoded = compiler.encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kubeconfig_descriptor.bin"), &encoded)?;

    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::StrictCodec")
        // A download's answer is moved through several layers on every call; its credential (a
        // dozen fields, present only on a minted file) is boxed so that what moves stays small.
        .boxed(".kubeconfig.v1.GetKubeconfigResponse.credential")
        .boxed(".kubeconfig.v1.GetAdminKubeconfigResponse.credential")
        .compile_fds(fds)?;
    Ok(())
}
