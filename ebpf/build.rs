// bpf-linker must be on PATH; make a missing one a clear error instead of a
// cryptic linker failure deep inside rustc.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if let Err(err) = which::which("bpf-linker") {
        panic!("bpf-linker not found on PATH ({err}); run `cargo xtask setup`");
    }
}
