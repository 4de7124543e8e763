//! Inference plugins: a module that computes a tensor from a tensor, behind
//! the TensorView ABI (`docs/wasm-abi.md`). The module exports `memory`,
//! `sluice_alloc`, `init`, `infer` and `free`; tensors cross as 28-byte
//! views of its linear memory, which the host checks before it reads one.

use std::sync::{Arc, Mutex};

use wasmtime::{Instance, Linker, Memory, Module, Store, TypedFunc};

use crate::sandbox::{self, Fence, Fenced, Runtime};
use crate::{FailKind, Failure, Limits};

/// Bytes of one TensorView: `ptr`, `len`, `shape[4]`, `dtype`, each a
/// little-endian u32.
pub const VIEW_BYTES: usize = 28;

/// Bytes of one element of each dtype code (0 = f32, 1 = i32, 2 = i64,
/// 3 = u8).
pub fn dtype_size(dtype: u32) -> Option<usize> {
    Some(match dtype {
        0 | 1 => 4,
        2 => 8,
        3 => 1,
        _ => return None,
    })
}

/// A tensor crossing the boundary: raw little-endian elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub bytes: Vec<u8>,
    /// Up to four sizes.
    pub shape: Vec<u32>,
    pub dtype: u32,
}

struct Data {
    fence: Fence,
}

impl Fenced for Data {
    fn fence(&mut self) -> &mut Fence {
        &mut self.fence
    }
}

/// One instance with its model loaded.
struct Slot {
    store: Store<Data>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    infer: TypedFunc<(i32, i32, i32), i32>,
    free: TypedFunc<i32, ()>,
    handle: i32,
    /// The area the host writes into: its offset and size.
    area: (u32, usize),
}

/// A loaded inference plugin: its compiled module, the model bytes handed
/// to `init`, and idle instances (one per concurrent call at most).
pub struct Inference {
    name: Arc<str>,
    module: Module,
    linker: Linker<Data>,
    model: Arc<[u8]>,
    limits: Limits,
    idle: Mutex<Vec<Slot>>,
}

impl Inference {
    /// Compiles `wasm` (binary or text) and starts one instance with
    /// `model` to prove it works.
    pub fn load(name: &str, wasm: &[u8], model: Vec<u8>, limits: Limits) -> Result<Self, String> {
        let rt = Runtime::get()?;
        let module = rt.compile(wasm)?;
        let mut linker = Linker::new(rt.engine());
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| format!("{e:#}"))?;
        let this = Self {
            name: Arc::from(name),
            module,
            linker,
            model: model.into(),
            limits,
            idle: Mutex::new(Vec::new()),
        };
        let first = this.start().map_err(|f| f.message)?;
        this.put(first);
        Ok(this)
    }

    fn take(&self) -> Option<Slot> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, slot: Slot) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }

    fn abi(&self, what: impl std::fmt::Display) -> Failure {
        Failure::new(FailKind::Abi, format!("plugin '{}': {what}", self.name))
    }

    /// A fresh instance: exports found, the model copied in, `init` called.
    fn start(&self) -> Result<Slot, Failure> {
        let rt = Runtime::get().map_err(|e| self.abi(e))?;
        let mut store = sandbox::store(
            rt.engine(),
            Data {
                fence: Fence::new(self.limits),
            },
        );
        sandbox::arm(&mut store, &self.limits);
        let instance: Instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| sandbox::classify(&mut store, &self.name, e))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| self.abi("the module exports no 'memory'"))?;
        let func = |name: &str| format!("the module does not export '{name}' with the ABI's type");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "sluice_alloc")
            .map_err(|_| self.abi(func("sluice_alloc(i32) -> i32")))?;
        let init = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "init")
            .map_err(|_| self.abi(func("init(i32, i32) -> i32")))?;
        let infer = instance
            .get_typed_func::<(i32, i32, i32), i32>(&mut store, "infer")
            .map_err(|_| self.abi(func("infer(i32, i32, i32) -> i32")))?;
        let free = instance
            .get_typed_func::<i32, ()>(&mut store, "free")
            .map_err(|_| self.abi(func("free(i32)")))?;
        let mut slot = Slot {
            store,
            memory,
            alloc,
            infer,
            free,
            handle: -1,
            area: (0, 0),
        };
        let len = self.model.len();
        let ptr = if len == 0 {
            0
        } else {
            self.reserve(&mut slot, len)?
        };
        if len > 0 {
            slot.memory
                .write(&mut slot.store, ptr as usize, &self.model)
                .map_err(|_| self.view("sluice_alloc gave an area outside memory"))?;
        }
        sandbox::arm(&mut slot.store, &self.limits);
        let handle = init
            .call(&mut slot.store, (ptr as i32, len as i32))
            .map_err(|e| sandbox::classify(&mut slot.store, &self.name, e))?;
        if handle < 0 {
            return Err(self.abi(format!("init refused the model (error {handle})")));
        }
        slot.handle = handle;
        // The model's area is the module's now: the next request gets its own.
        slot.area = (0, 0);
        Ok(slot)
    }

    fn view(&self, what: impl std::fmt::Display) -> Failure {
        Failure::new(FailKind::View, format!("plugin '{}': {what}", self.name))
    }

    /// An area of `len` bytes from `sluice_alloc`, checked to lie in memory.
    fn reserve(&self, slot: &mut Slot, len: usize) -> Result<u32, Failure> {
        let want = i32::try_from(len).map_err(|_| self.abi("a tensor over 2 GiB"))?;
        sandbox::arm(&mut slot.store, &self.limits);
        let ptr = slot
            .alloc
            .call(&mut slot.store, want)
            .map_err(|e| sandbox::classify(&mut slot.store, &self.name, e))?;
        if ptr <= 0 {
            return Err(Failure::new(
                FailKind::Error,
                format!("plugin '{}': sluice_alloc({len}) failed", self.name),
            ));
        }
        let end = ptr as u64 + len as u64;
        if end > slot.memory.data_size(&slot.store) as u64 {
            return Err(self.view(format!(
                "sluice_alloc({len}) gave offset {ptr}, past the end of memory"
            )));
        }
        Ok(ptr as u32)
    }

    /// Runs `infer` on `input`. A failure that leaves the instance in doubt
    /// (a trap, a timeout, memory) drops it; the next call gets a fresh one.
    pub fn infer(&self, input: &Tensor) -> Result<Tensor, Failure> {
        let mut slot = match self.take() {
            Some(s) => s,
            None => self.start()?,
        };
        let result = self.run(&mut slot, input);
        match &result {
            Err(f) if f.poisons() => slot.handle = -1,
            _ => self.put(slot),
        }
        result
    }

    fn run(&self, slot: &mut Slot, input: &Tensor) -> Result<Tensor, Failure> {
        if input.shape.len() > 4 {
            return Err(Failure::new(
                FailKind::Error,
                format!("plugin '{}': a tensor has at most 4 dimensions", self.name),
            ));
        }
        // Two views, then the data (8-aligned when the area is).
        let need = 2 * VIEW_BYTES + 8 + input.bytes.len();
        if slot.area.1 < need {
            slot.area = (self.reserve(slot, need)?, need);
        }
        let base = slot.area.0 as usize;
        let (in_view, out_view, data) = (base, base + VIEW_BYTES, base + 64);
        let mut view = [0u8; VIEW_BYTES];
        put_u32(&mut view, 0, data as u32);
        put_u32(&mut view, 1, input.bytes.len() as u32);
        for (i, d) in input.shape.iter().enumerate() {
            put_u32(&mut view, 2 + i, *d);
        }
        put_u32(&mut view, 6, input.dtype);
        let mem = slot.memory.data_mut(&mut slot.store);
        mem[data..data + input.bytes.len()].copy_from_slice(&input.bytes);
        mem[in_view..in_view + VIEW_BYTES].copy_from_slice(&view);
        mem[out_view..out_view + VIEW_BYTES].fill(0);
        sandbox::arm(&mut slot.store, &self.limits);
        let rc = slot
            .infer
            .call(
                &mut slot.store,
                (slot.handle, in_view as i32, out_view as i32),
            )
            .map_err(|e| sandbox::classify(&mut slot.store, &self.name, e))?;
        if rc != 0 {
            return Err(Failure::new(
                FailKind::Error,
                format!("plugin '{}': infer failed with error {rc}", self.name),
            ));
        }
        self.read_output(slot, out_view)
    }

    /// The output view, checked: in memory, a known dtype, and as many
    /// bytes as its shape holds.
    fn read_output(&self, slot: &mut Slot, at: usize) -> Result<Tensor, Failure> {
        let mem = slot.memory.data(&slot.store);
        let mut view = [0u8; VIEW_BYTES];
        view.copy_from_slice(&mem[at..at + VIEW_BYTES]);
        let (ptr, len) = (get_u32(&view, 0) as u64, get_u32(&view, 1) as u64);
        let dims: Vec<u32> = (2..6).map(|i| get_u32(&view, i)).collect();
        let dtype = get_u32(&view, 6);
        if ptr + len > mem.len() as u64 {
            return Err(self.view(format!(
                "the output view [{ptr}, {ptr}+{len}) is outside its {} bytes of memory",
                mem.len()
            )));
        }
        let size = dtype_size(dtype)
            .ok_or_else(|| self.view(format!("the output view has unknown dtype {dtype}")))?;
        let rank = dims.iter().take_while(|d| **d != 0).count();
        if dims[rank..].iter().any(|d| *d != 0) {
            return Err(self.view(format!("the output shape {dims:?} has a 0 before a size")));
        }
        let shape = dims[..rank].to_vec();
        let elements: u64 = shape.iter().map(|d| *d as u64).product();
        if elements * size as u64 != len {
            return Err(self.view(format!(
                "the output view holds {len} bytes; shape {shape:?} of dtype {dtype} needs {}",
                elements * size as u64
            )));
        }
        let bytes = mem[ptr as usize..(ptr + len) as usize].to_vec();
        Ok(Tensor {
            bytes,
            shape,
            dtype,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.handle >= 0 {
            self.store.set_epoch_deadline(100);
            let _ = self.free.call(&mut self.store, self.handle);
        }
    }
}

fn put_u32(view: &mut [u8; VIEW_BYTES], i: usize, v: u32) {
    view[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(view: &[u8; VIEW_BYTES], i: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&view[i * 4..i * 4 + 4]);
    u32::from_le_bytes(b)
}
