fn main() {
    std::process::exit(docsmith::cli::main());
}
