//! What the soak serves and who calls: a generated fleet in a Secret-style inventory volume, a tenant
//! in a ConfigMap-style volume, and the identities of the load — a tenant admin, one viewer per
//! project, and churn users whose binding or API key the run keeps removing and restoring.

use std::path::Path;
use std::sync::Mutex;

use kubeconfigd_e2e::fleet::{self, AdminCredential};

use crate::volume::Volume;

/// Projects of the fleet (three, so that every project holds clusters a viewer may download).
pub const PROJECTS: usize = 3;

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Admin,
    Viewer(usize),
    Churn(usize),
}

impl Who {
    pub fn api_key(self) -> String {
        match self {
            Who::Admin => "scale-admin-key".to_owned(),
            Who::Viewer(p) => format!("scale-viewer-p{p}-key"),
            Who::Churn(i) => format!("soak-churn-{i}-key"),
        }
    }

    pub fn project(self) -> usize {
        match self {
            Who::Admin => 0,
            Who::Viewer(p) => p,
            Who::Churn(i) => i % PROJECTS,
        }
    }
}

/// A churn user's access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    BindingRemoved,
    KeyRemoved,
}

/// The fleet's clusters, by what the load does with them.
#[derive(Debug, Default)]
pub struct Fleet {
    pub count: usize,
    /// Per project: clusters whose kubeconfig a Cluster Viewer may download (OIDC configured).
    pub viewable: Vec<Vec<usize>>,
    /// Clusters with a static admin credential.
    pub static_admin: Vec<usize>,
    /// Clusters whose admin credential is minted per caller.
    pub minted: Vec<usize>,
}

/// Whether cluster `index` of the generated fleet mints its admin credential.
fn is_minted(index: usize) -> bool {
    index % 10 == 7
}

impl Fleet {
    pub fn new(count: usize) -> Self {
        let mut fleet = Fleet {
            count,
            viewable: vec![Vec::new(); PROJECTS],
            ..Fleet::default()
        };
        for index in 0..count {
            // Generated packs 0 and 1 (of four) have OIDC properly configured.
            if index % 4 < 2 {
                fleet.viewable[index % PROJECTS].push(index);
            }
            if is_minted(index) {
                fleet.minted.push(index);
            } else {
                fleet.static_admin.push(index);
            }
        }
        fleet
    }

    pub fn file_name(index: usize) -> String {
        format!("c{index:06}.yaml")
    }
}

/// The tenant file with each churn user's access as given.
pub fn tenant_text(churn: &[Access]) -> String {
    use std::fmt::Write as _;
    let mut text = String::from(
        "# The soak's tenant.\ntenant: soak\npolicy: seed\nreverseProxy:\n  server: proxy.scale.test\n  port: 443\nprojects:\n",
    );
    for p in 0..PROJECTS {
        let _ = writeln!(text, "  - uid: p{p}\n    name: Project {p}");
    }
    text.push_str("users:\n");
    let mut user = |email: &str, key: Option<String>| {
        let _ = writeln!(text, "  - email: {email}");
        if let Some(key) = key {
            let _ = writeln!(
                text,
                "    apiKeys:\n      - sha256:{}",
                fleet::api_key_hash(&key)
            );
        }
    };
    user("admin@scale.test", Some(Who::Admin.api_key()));
    for p in 0..PROJECTS {
        user(
            &format!("viewer-p{p}@scale.test"),
            Some(Who::Viewer(p).api_key()),
        );
    }
    for (i, access) in churn.iter().enumerate() {
        let key = (*access != Access::KeyRemoved).then(|| Who::Churn(i).api_key());
        user(&format!("churn-{i}@soak.test"), key);
    }
    text.push_str("bindings:\n  - user: admin@scale.test\n    role: Tenant Admin\n");
    for p in 0..PROJECTS {
        let _ = writeln!(
            text,
            "  - user: viewer-p{p}@scale.test\n    role: Cluster Viewer\n    project: p{p}"
        );
    }
    for (i, access) in churn.iter().enumerate() {
        if *access != Access::BindingRemoved {
            let _ = writeln!(
                text,
                "  - user: churn-{i}@soak.test\n    role: Cluster Viewer\n    project: p{}",
                i % PROJECTS
            );
        }
    }
    text
}

/// Writes the fleet's cluster files and the tenant into `work`, as volumes.
pub fn create(work: &Path, fleet: &Fleet, churn_users: usize) -> anyhow::Result<(Volume, Volume)> {
    let files = std::thread::scope(|scope| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let threads = 2;
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || -> anyhow::Result<Vec<(String, Vec<u8>)>> {
                    (worker..fleet.count)
                        .step_by(threads)
                        .map(|index| {
                            let admin = if is_minted(index) {
                                AdminCredential::Minted
                            } else {
                                AdminCredential::Static
                            };
                            let text = fleet::cluster_file_with(index, PROJECTS, admin)?;
                            Ok((Fleet::file_name(index), text.into_bytes()))
                        })
                        .collect()
                })
            })
            .collect();
        let mut files = Vec::new();
        for worker in workers {
            files.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("generator panicked"))??,
            );
        }
        Ok(files)
    })?;
    let inventory = Volume::create(&work.join("inventory"), &files)?;
    let tenant = Volume::create(
        &work.join("tenant"),
        &[(
            "tenant.yaml".to_owned(),
            tenant_text(&vec![Access::Granted; churn_users]).into_bytes(),
        )],
    )?;
    Ok((inventory, tenant))
}

/// The history of every churn user's access: (seconds since the start, access) in time order, the
/// time taken once the tenant file holding the change is in place.
#[derive(Debug)]
pub struct Timeline {
    changes: Mutex<Vec<Vec<(f64, Access)>>>,
}

impl Timeline {
    pub fn new(users: usize) -> Self {
        Timeline {
            changes: Mutex::new(vec![vec![(0.0, Access::Granted)]; users]),
        }
    }

    pub fn record(&self, user: usize, at: f64, access: Access) {
        self.changes.lock().expect("timeline")[user].push((at, access));
    }

    pub fn snapshot(&self) -> Vec<Vec<(f64, Access)>> {
        self.changes.lock().expect("timeline").clone()
    }
}

/// What a churn user's call made from `start` to `end` must get, from their history: `Some(true)`
/// served, `Some(false)` refused, `None` either (it began within `grace` of a change, or a change
/// came while it was being answered).
pub fn expected(history: &[(f64, Access)], start: f64, end: f64, grace: f64) -> Option<bool> {
    let current = history.iter().rev().find(|(t, _)| *t <= start)?;
    if start - current.0 < grace || history.iter().any(|(t, _)| *t > start && *t <= end) {
        return None;
    }
    Some(current.1 == Access::Granted)
}

/// Edits a cluster file so that its kubeconfig changes: the API server's port moves.
pub fn edited_cluster(text: &str, generation: u64) -> String {
    let port = 6000 + (generation % 3000);
    text.lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("apiServer: ") {
                let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
                format!("apiServer: {host}:{port}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_judged_by_the_access_it_began_and_ended_under() {
        let history = [(1.0, Access::BindingRemoved), (5.0, Access::Granted)];
        // Long after the restoration, answered at once: must be served.
        assert_eq!(expected(&history, 8.0, 8.1, 2.0), Some(true));
        // Within the grace after a change: either.
        assert_eq!(expected(&history, 6.0, 6.1, 2.0), None);
        // Revoked, settled: must be refused.
        assert_eq!(expected(&history, 4.0, 4.5, 2.0), Some(false));
        // Began while revoked, answered after the restoration: either.
        assert_eq!(expected(&history, 4.0, 5.5, 2.0), None);
        // Before any change: not judged.
        assert_eq!(expected(&history, 0.5, 0.6, 2.0), None);
    }
}
