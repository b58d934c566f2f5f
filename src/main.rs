//! The `pbsync` binary: parse the command line, run, map the outcome to an exit code.

// mimalloc rather than glibc's malloc: a plan of 10,000 bundles peaks at ~360 MB instead of
// ~500 MB (glibc keeps an arena per thread, and tokio plus rayon run several), and is faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pbsync::cli::main()
}
