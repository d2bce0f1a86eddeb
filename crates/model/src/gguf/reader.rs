//! The GGUF container (versions 2 and 3): header, metadata key/values of every type (arrays
//! included), tensor infos, `general.alignment` and the data section, memory-mapped.
//!
//! Everything read from the file is bounds-checked while parsing: counts and lengths are checked
//! against the bytes left before anything is allocated, every tensor's byte range is checked to lie
//! inside the data section, so a truncated or garbage file gives a [`ModelError::Gguf`] naming the
//! file and what is wrong, never a panic. Layout (little endian): `"GGUF"`, `u32` version,
//! `u64` tensor count, `u64` metadata count, the key/values (`u64`-length strings), the tensor
//! infos (name, `u32` dims, `u64` sizes innermost first, `u32` type, `u64` offset into the data),
//! then the data section at the next multiple of the alignment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use crate::error::{ModelError, Result};
use crate::weights::Buffer;

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted (real files use arrays of scalars or strings).
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// GGUF's id of the value's type.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// Any integer value, as i64 (`None` for a u64 beyond i64's range).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A non-negative integer value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// A short description for error messages (arrays and long strings are not printed whole).
    pub fn summary(&self) -> String {
        match self {
            MetaValue::Array(items) => format!("an array of {} values", items.len()),
            MetaValue::String(s) if s.len() > 64 => format!("a string of {} bytes", s.len()),
            other => format!("{other:?}"),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Sizes innermost first (ggml's `ne`): a `[out, in]` matrix has `dims == [in, out]`.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn num_values(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file whose tensor data stays in the (mapped) file.
pub struct GgufFile {
    path: PathBuf,
    buffer: Buffer,
    pub version: u32,
    pub alignment: usize,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: usize,
}

/// A bounds-checked little-endian cursor; errors are plain messages the caller adds context to.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Parse<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated: {n} bytes needed at offset {}, the file has {}",
                self.pos,
                self.bytes.len()
            )),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u64` count or length that must fit the bytes left at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Parse<usize> {
        let at = self.pos;
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.remaining() => Ok(n),
            _ => Err(format!(
                "{what} {n} at offset {at} is larger than the rest of the file ({} bytes; truncated?)",
                self.remaining()
            )),
        }
    }

    fn string(&mut self) -> Parse<String> {
        let n = self.count(1, "string length")?;
        let at = self.pos;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("string at offset {at} is not valid UTF-8"))
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Parse<MetaValue> {
        Ok(match type_id {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("bool value {b} is neither 0 nor 1")),
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(format!("unknown array element type {other}")),
                };
                let n = self.count(min_size, "array length")?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(
                        self.value(elem, depth + 1)
                            .map_err(|e| format!("array element {i}: {e}"))?,
                    );
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Memory-maps and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the mapping is read-only and model files are not modified while serving.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::parse(path.to_path_buf(), Buffer::Mapped(map))
    }

    /// Parses a GGUF file held in memory; `name` stands for its path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Buffer::Owned(bytes))
    }

    fn parse(path: PathBuf, buffer: Buffer) -> Result<Self> {
        let bad = |message: String| ModelError::Gguf {
            path: path.clone(),
            message,
        };
        let mut c = Cursor {
            bytes: &buffer,
            pos: 0,
        };
        let magic = c.take(4).map_err(|_| {
            bad(format!(
                "{} bytes is too short for a GGUF header",
                buffer.len()
            ))
        })?;
        if magic != b"GGUF" {
            return Err(bad(format!(
                "bad magic {magic:02x?}: expected \"GGUF\" (is this a GGUF file?)"
            )));
        }
        let version = c.u32().map_err(&bad)?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(bad(
                    "GGUF version 1 is not supported (only 2 and 3); convert the model again"
                        .into(),
                ))
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(bad("big-endian GGUF files are not supported".into()))
            }
            v => return Err(bad(format!("unknown GGUF version {v} (supported: 2, 3)"))),
        }
        // A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
        let num_tensors = c.count(32, "tensor count").map_err(&bad)?;
        let num_kv = c.count(13, "metadata count").map_err(&bad)?;

        let mut metadata = Vec::with_capacity(num_kv);
        let mut meta_index = HashMap::with_capacity(num_kv);
        for i in 0..num_kv {
            let key = c
                .string()
                .map_err(|e| bad(format!("metadata entry {i}: key: {e}")))?;
            let value = c
                .u32()
                .and_then(|t| c.value(t, 0))
                .map_err(|e| bad(format!("metadata {key}: {e}")))?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(bad(format!("metadata key {key} appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(bad(format!(
                        "general.alignment {} is not a power of two",
                        v.summary()
                    )))
                }
            },
        };

        let mut infos = Vec::with_capacity(num_tensors);
        for i in 0..num_tensors {
            let info = Self::parse_tensor_info(&mut c, alignment)
                .map_err(|e| bad(format!("tensor info {i}: {e}")))?;
            infos.push(info);
        }
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        let data_len = buffer.len().saturating_sub(data_offset);
        let mut tensor_index = HashMap::with_capacity(infos.len());
        for (i, t) in infos.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(bad(format!("tensor {} appears twice", t.name)));
            }
            if t.offset
                .checked_add(t.n_bytes)
                .is_none_or(|end| end > data_len)
            {
                return Err(bad(format!(
                    "tensor {} ({} bytes at data offset {}) lies outside the file: the data section has {data_len} bytes (truncated file?)",
                    t.name, t.n_bytes, t.offset
                )));
            }
        }
        Ok(Self {
            path,
            buffer,
            version,
            alignment,
            metadata,
            meta_index,
            tensors: infos,
            tensor_index,
            data_offset,
        })
    }

    fn parse_tensor_info(c: &mut Cursor<'_>, alignment: usize) -> Parse<TensorInfo> {
        let name = c.string()?;
        let ctx = |e: String| format!("{name}: {e}");
        let n_dims = c.u32().map_err(ctx)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(ctx(format!(
                "{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64().map_err(ctx)?;
            dims.push(usize::try_from(d).map_err(|_| ctx(format!("dimension {d} too large")))?);
        }
        let type_id = c.u32().map_err(ctx)?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| ctx(format!("unknown ggml type id {type_id}")))?;
        let offset = c.u64().map_err(ctx)?;
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| o.is_multiple_of(alignment))
            .ok_or_else(|| {
                ctx(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                ))
            })?;
        let rows = dims[1..]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let (block, _) = ty.block_geometry();
        if !dims[0].is_multiple_of(block) {
            return Err(ctx(format!(
                "rows of {} values are not whole {ty} blocks of {block}",
                dims[0]
            )));
        }
        let row_bytes = ty
            .row_bytes(dims[0])
            .ok_or_else(|| ctx(format!("size {dims:?} overflows")))?;
        let n_bytes = rows
            .and_then(|r| r.checked_mul(row_bytes))
            .ok_or_else(|| ctx(format!("size {dims:?} overflows")))?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        })
    }

    /// The file's path (or the name given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn metadata(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every key/value in file order.
    pub fn metadata_entries(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (checked against the file size when the file was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let start = self.data_offset + info.offset;
        self.buffer
            .get(start..start + info.n_bytes)
            .ok_or_else(|| self.error(format!("tensor {} lies outside the file", info.name)))
    }

    /// An optional key that must hold a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// An optional key that must hold a number.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        self.typed(key, "an array", MetaValue::as_array)
    }

    fn typed<'s, T>(
        &'s self,
        key: &str,
        what: &str,
        get: impl Fn(&'s MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| {
                self.error(format!(
                    "metadata {key} should be {what}, found {}",
                    v.summary()
                ))
            }),
        }
    }
}
