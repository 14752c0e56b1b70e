//! `milvus-standin`: one Milvus 2.6 cluster with CDC, for tests, demos and drills.
fn main() {
    println!("milvus-standin {}", env!("CARGO_PKG_VERSION"));
}
