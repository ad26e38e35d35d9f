//! Benchmark: boot (filled in by its issue).

fn main() {
    eprintln!("boot benchmark: not written yet");
}
