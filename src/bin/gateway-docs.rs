//! Write the man pages and shell completions under a directory; see `gateway_systemd::docs`.

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: gateway-docs OUTDIR   (writes OUTDIR/man/*.[578] and OUTDIR/completions/share/...)");
        std::process::exit(2);
    };
    match gateway_systemd::docs::generate(std::path::Path::new(&out)) {
        Ok(files) => println!(
            "{} files written under {}",
            files.len(),
            out.to_string_lossy()
        ),
        Err(e) => {
            eprintln!("gateway-docs: {}: {e}", out.to_string_lossy());
            std::process::exit(1);
        }
    }
}
