//! Generated code for the `kubeconfig.v1` API (see `proto/kubeconfig/v1/kubeconfig.proto`): message
//! types, the tonic client and server stubs, and the encoded descriptor set for server reflection.
//!
//! The build script generates everything into `OUT_DIR` except [`codec`], the small codec the
//! generated service uses. It must not depend on any other workspace crate.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

pub mod codec;

/// `kubeconfig.v1`.
pub mod kubeconfig {
    pub mod v1 {
        tonic::include_proto!("kubeconfig.v1");
    }
}

/// `google.api`, for the http annotations (generated because the API imports them).
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// The encoded `FileDescriptorSet` of the API and its imports, with extension options kept.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kubeconfig_descriptor.bin"));
