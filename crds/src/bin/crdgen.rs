//! Writes the CRD YAML generated from the Rust types: one `<plural>.ambit.dev.yaml` per Ambit
//! CRD into the directory given as the only argument (default `crds/`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args_os().nth(1).unwrap_or_else(|| "crds".into()));
    let files = match ambit_crds::crd_files() {
        Ok(files) => files,
        Err(error) => {
            let cause = std::error::Error::source(&error)
                .map(ToString::to_string)
                .unwrap_or_default();
            eprintln!("crdgen: {error}: {cause}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    for file in files {
        let path = dir.join(&file.file_name);
        if let Err(error) = std::fs::write(&path, file.yaml) {
            eprintln!("crdgen: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
