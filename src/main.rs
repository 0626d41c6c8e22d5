fn main() {
    std::process::exit(trove::cli::main());
}
