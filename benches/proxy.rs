//! Benchmark: proxy (filled in by its issue).

fn main() {
    eprintln!("proxy benchmark: not written yet");
}
