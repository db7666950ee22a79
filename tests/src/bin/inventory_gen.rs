//! Generates a fleet for scale benchmarks (see `kubeconfigd_e2e::fleet`): a tenant file and N cluster
//! files.
//!
//! `inventory-gen OUT_DIR N [PROJECTS]` writes `OUT_DIR/tenant.yaml` and `OUT_DIR/inventory/*.yaml`.

use std::path::{Path, PathBuf};

use kubeconfigd_e2e::fleet::{cluster_file, tenant_file};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(out), Some(count)) = (args.first(), args.get(1)) else {
        eprintln!("usage: inventory-gen OUT_DIR N [PROJECTS]");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let count: usize = count.parse()?;
    let projects: usize = args.get(2).map_or(Ok(8), |p| p.parse())?;
    let inventory = out.join("inventory");
    std::fs::create_dir_all(&inventory)?;
    std::fs::write(out.join("tenant.yaml"), tenant_file(projects))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| -> Result<(), String> {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let inventory: &Path = &inventory;
                scope.spawn(move || -> Result<(), String> {
                    for index in (worker..count).step_by(threads) {
                        let text = cluster_file(index, projects).map_err(|e| e.to_string())?;
                        std::fs::write(inventory.join(format!("c{index:06}.yaml")), text)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| "a worker panicked".to_owned())??;
        }
        Ok(())
    })?;
    println!("{count} clusters in {}", inventory.display());
    Ok(())
}
