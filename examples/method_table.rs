//! Prints switchyard's method table as TSV, one row per RPC: `name\tkind\treply`.
//!
//! `kind` is one of `dml ddl dcl read-data read-metadata control streaming`, `reply` one of
//! `status wrapped other`. `tests/python/test_conformance.py` reads this output and checks
//! every row against pymilvus's compiled descriptors and its own expected classification.
//!
//! Run with `cargo run -q --example method_table`.

use std::io::{self, BufWriter, Write};

use switchyard::method::{self, Kind, ReadClass, Reply, WriteClass};

fn kind(k: Kind) -> &'static str {
    match k {
        Kind::Write(WriteClass::Dml) => "dml",
        Kind::Write(WriteClass::Ddl) => "ddl",
        Kind::Write(WriteClass::Dcl) => "dcl",
        Kind::Read(ReadClass::Data) => "read-data",
        Kind::Read(ReadClass::Metadata) => "read-metadata",
        Kind::Control => "control",
        Kind::Streaming => "streaming",
    }
}

fn reply(r: Reply) -> &'static str {
    match r {
        Reply::Status => "status",
        Reply::Wrapped => "wrapped",
        Reply::Other => "other",
    }
}

fn main() -> io::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    for m in method::all() {
        writeln!(out, "{}\t{}\t{}", m.name, kind(m.kind), reply(m.reply))?;
    }
    out.flush()
}
