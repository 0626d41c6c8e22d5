//! Command-line entry point (being built).
pub fn main() -> i32 {
    0
}
