//! The `sluice` command line. The gateway daemon arrives with the daemon issue; until then the
//! binary only reports its version.

fn main() {
    println!("sluice {}", env!("CARGO_PKG_VERSION"));
}
