//! Rebuild when embedded migrations change: refinery's macro reads these directories at
//! compile time, and cargo does not know that by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=schema");
}
