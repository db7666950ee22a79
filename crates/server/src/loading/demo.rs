//! The built-in demo: the tenant and inventory under `deploy/demo/`, embedded in the binary so that
//! `kubeconfigd --demo` needs no files. All key material in it was generated for the demo and protects
//! nothing.

/// `deploy/demo/tenant.yaml`.
pub const TENANT: &str = include_str!("../../../../deploy/demo/tenant.yaml");

/// `deploy/demo/inventory/*.yaml`, by file name.
pub const CLUSTERS: &[(&str, &str)] = &[
    (
        "prod-east.yaml",
        include_str!("../../../../deploy/demo/inventory/prod-east.yaml"),
    ),
    (
        "edge-store-42.yaml",
        include_str!("../../../../deploy/demo/inventory/edge-store-42.yaml"),
    ),
    (
        "eks-analytics.yaml",
        include_str!("../../../../deploy/demo/inventory/eks-analytics.yaml"),
    ),
    (
        "edge-factory-7.yaml",
        include_str!("../../../../deploy/demo/inventory/edge-factory-7.yaml"),
    ),
    (
        "prod-minted.yaml",
        include_str!("../../../../deploy/demo/inventory/prod-minted.yaml"),
    ),
    (
        "broken-staging.yaml",
        include_str!("../../../../deploy/demo/inventory/broken-staging.yaml"),
    ),
];
