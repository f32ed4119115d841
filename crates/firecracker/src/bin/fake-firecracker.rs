//! A stand-in for the `firecracker` (and `jailer`) binary in tests: serves the swagger-checked
//! fake API on `--api-sock`. See `bazel_diff_firecracker::fake::binary_main` for the arguments.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(bazel_diff_firecracker::fake::binary_main(args));
}
