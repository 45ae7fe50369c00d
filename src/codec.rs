//! The pass-through codec (payloads stay the agent's bytes) and gRPC's framing. They live
//! in `satmesh_proto::codec`, shared with the sink and the load generator of
//! `satmesh-tools`; this module keeps the name the front door and upstream use.

pub use satmesh_proto::codec::{PassThrough, grpc_frame};
