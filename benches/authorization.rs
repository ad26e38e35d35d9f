//! Benchmark: authorization (filled in by its issue).

fn main() {
    eprintln!("authorization benchmark: not written yet");
}
