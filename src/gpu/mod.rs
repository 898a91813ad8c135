//! The thin GPU runtime: device, buffers, pipeline cache and one launcher per WGSL kernel family.

pub mod context;
pub mod kernels;
pub mod profile;
pub mod recorder;
pub mod selfcheck;
pub mod shader;
pub mod tensor;

pub use context::{Gpu, GpuFeatures, OomScope};
pub use recorder::{BindCache, Recorder};
pub use tensor::{Tensor, Weight};
