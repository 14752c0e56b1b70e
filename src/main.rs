//! The `switchyard` binary: the proxy and its control CLI.
fn main() {
    println!("switchyard {}", env!("CARGO_PKG_VERSION"));
}
