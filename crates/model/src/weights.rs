//! Weight storage and safetensors reading.
//!
//! [`TensorSource`] memory-maps one or many `*.safetensors` files (or holds an in-memory buffer, for the
//! built-in demo model) and hands out tensors by name, converted to the runner's storage dtype and
//! checked against the expected shape; [`WeightSource`] is what the model loader needs from any
//! weight format (safetensors here, GGUF in `crate::gguf`). [`Linear`] is a row-major `[out, in]`
//! weight matrix in f32 or bf16, the layout every matmul kernel reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::hugepages::huge_vec;

/// How weights are kept in memory for the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
}

impl WeightDtype {
    pub fn size_bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            other => Err(ModelError::InvalidOption(format!(
                "dtype {other:?} is not supported (use auto, f32 or bf16)"
            ))),
        }
    }
}

/// The values of a weight matrix; bf16 is kept as raw bits.
#[derive(Debug, Clone)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// A row-major `[rows, cols]` matrix: `rows` outputs, each a dot product over `cols` inputs.
#[derive(Debug, Clone)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Linear {
    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            WeightData::F32(_) => WeightDtype::F32,
            WeightData::Bf16(_) => WeightDtype::Bf16,
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype().size_bytes()
    }

    /// Writes row `row` as f32 into `out` (embedding lookup).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.data {
            WeightData::F32(d) => out.copy_from_slice(&d[range]),
            WeightData::Bf16(d) => {
                for (o, &b) in out.iter_mut().zip(&d[range]) {
                    *o = bf16::from_bits(b).to_f32();
                }
            }
        }
    }
}

/// What [`crate::model::Model::load`] asks of a weight file, by Hugging Face tensor name:
/// safetensors ([`TensorSource`]) or GGUF ([`crate::gguf::GgufSource`]).
pub trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    /// The runner dtype `auto` chooses for a tensor stored like this one.
    fn stored_dtype(&self, name: &str) -> Result<WeightDtype>;
    /// A tensor of the given shape as f32 values (norm weights, biases).
    fn vector_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// A `[rows, cols]` matrix stored as `dtype`.
    fn linear(&self, name: &str, rows: usize, cols: usize, dtype: WeightDtype) -> Result<Linear>;
    /// A `[rows, cols]` matrix as quantized ggml blocks the kernels compute on directly, when
    /// this source serves it that way (a GGUF file's quantized tensors); `None`: use [`Self::linear`].
    fn quantized_blocks(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantizedBlocks<'_>>> {
        let _ = (name, rows, cols);
        Ok(None)
    }
}

/// Row-major ggml blocks of one matrix (see [`WeightSource::quantized_blocks`]).
#[derive(Debug, Clone)]
pub struct QuantizedBlocks<'a> {
    /// [`crate::ops::gemm::WeightKind::Q8_0`] (`block_q8_0` rows), `Q4K` (`block_q4_K` rows) or
    /// `Q6K` (`block_q6_K` rows).
    pub kind: crate::ops::gemm::WeightKind,
    /// Borrowed from the mapped file when its rows are already in order.
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

impl WeightSource for TensorSource {
    fn contains(&self, name: &str) -> bool {
        TensorSource::contains(self, name)
    }
    fn stored_dtype(&self, name: &str) -> Result<WeightDtype> {
        TensorSource::stored_dtype(self, name)
    }
    fn vector_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        TensorSource::vector_f32(self, name, shape)
    }
    fn linear(&self, name: &str, rows: usize, cols: usize, dtype: WeightDtype) -> Result<Linear> {
        TensorSource::linear(self, name, rows, cols, dtype)
    }
}

/// Bytes of one weight file (safetensors, GGUF): memory-mapped from disk or owned.
pub(crate) enum Buffer {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buffer::Mapped(m) => m,
            Buffer::Owned(v) => v,
        }
    }
}

struct SafetensorsFile {
    name: String,
    buffer: Buffer,
    header_len: usize,
    metadata: Metadata,
}

/// A set of safetensors files whose tensors are looked up by name.
pub struct TensorSource {
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
}

impl TensorSource {
    /// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`, or else
    /// every `*.safetensors` in the directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    message: "missing weight_map object".into(),
                })?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(ModelError::Config {
                    path: dir.to_path_buf(),
                    message: "no *.safetensors weights in this directory".into(),
                });
            }
            found
        };
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the mapping is read-only and model files are not modified while serving.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            files.push(Self::parse(
                path.display().to_string(),
                Buffer::Mapped(map),
            )?);
        }
        Ok(Self::from_files(files))
    }

    /// A source over one in-memory safetensors buffer.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Ok(Self::from_files(vec![Self::parse(
            name.to_string(),
            Buffer::Owned(bytes),
        )?]))
    }

    fn parse(name: String, buffer: Buffer) -> Result<SafetensorsFile> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&buffer).map_err(|e| ModelError::Safetensors {
                file: name.clone(),
                message: e.to_string(),
            })?;
        Ok(SafetensorsFile {
            name,
            buffer,
            header_len,
            metadata,
        })
    }

    fn from_files(files: Vec<SafetensorsFile>) -> Self {
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.metadata.tensors().keys() {
                index.insert(name.clone(), i);
            }
        }
        Self { files, index }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Dtype, shape, raw bytes and file name of a tensor.
    fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8], &str)> {
        let file = self
            .index
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                searched: self
                    .files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let info = file
            .metadata
            .info(name)
            .expect("invariant: the index only holds names present in the file");
        let start = 8 + file.header_len + info.data_offsets.0;
        let end = 8 + file.header_len + info.data_offsets.1;
        let bytes = file
            .buffer
            .get(start..end)
            .ok_or_else(|| ModelError::Safetensors {
                file: file.name.clone(),
                message: format!("tensor {name} lies outside the file"),
            })?;
        Ok((info.dtype, &info.shape, bytes, &file.name))
    }

    fn checked(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8], &str)> {
        let (dtype, found, bytes, file) = self.raw(name)?;
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                file: file.to_string(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
        }
        match dtype {
            Dtype::F32 | Dtype::BF16 | Dtype::F16 => Ok((dtype, bytes, file)),
            other => Err(ModelError::UnsupportedDtype {
                file: file.to_string(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    /// The stored dtype of a tensor, for choosing the runner's storage dtype (`auto`).
    pub fn stored_dtype(&self, name: &str) -> Result<WeightDtype> {
        let (dtype, _, _, _) = self.raw(name)?;
        Ok(if dtype == Dtype::BF16 {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32
        })
    }

    /// A tensor of the given shape as f32 values (norm weights, biases).
    pub fn vector_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, bytes, _) = self.checked(name, shape)?;
        Ok(to_f32(dtype, bytes))
    }

    /// A `[rows, cols]` matrix stored as `dtype`.
    pub fn linear(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Linear> {
        let (stored, bytes, _) = self.checked(name, &[rows, cols])?;
        let data = match dtype {
            WeightDtype::F32 => WeightData::F32(to_f32(stored, bytes)),
            WeightDtype::Bf16 => WeightData::Bf16(to_bf16_bits(stored, bytes)),
        };
        Ok(Linear { rows, cols, data })
    }
}

fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let mut out = huge_vec(bytes.len() * 8 / dtype.bitsize());
    match dtype {
        Dtype::BF16 => out.extend(u16s(bytes).map(|b| bf16::from_bits(b).to_f32())),
        Dtype::F16 => out.extend(u16s(bytes).map(|b| f16::from_bits(b).to_f32())),
        _ => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
    }
    out
}

fn to_bf16_bits(dtype: Dtype, bytes: &[u8]) -> Vec<u16> {
    let mut out = huge_vec(bytes.len() * 8 / dtype.bitsize());
    match dtype {
        Dtype::BF16 => out.extend(u16s(bytes)),
        _ => out.extend(
            to_f32(dtype, bytes)
                .into_iter()
                .map(|x| bf16::from_f32(x).to_bits()),
        ),
    }
    out
}
