//! Builds the eBPF object (ebpf/) with aya-build so that a plain
//! `cargo build -p palisade-agent` embeds the programs.

fn main() -> anyhow::Result<()> {
    // The eBPF crate is its own workspace (it targets bpfel-unknown-none);
    // aya-build runs cargo in the current directory, so go there.
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    std::env::set_current_dir(&ebpf_dir)?;
    println!("cargo:rerun-if-changed=../common/src");
    // The stable toolchain builds core for the BPF target with build-std,
    // which needs RUSTC_BOOTSTRAP (see README, "Toolchain").
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "palisade-ebpf",
            root_dir: ebpf_dir.to_str().unwrap_or("../ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
}
