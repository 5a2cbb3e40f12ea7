//! etcd's KV API (`proto/etcd.proto`, a subset), generated.
#![allow(clippy::all, missing_docs)] // generated code
tonic::include_proto!("etcdserverpb");
