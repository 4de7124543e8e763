//! proxy-wasm HTTP filters (ABI v0.2.1): a module with a root context,
//! configured once per instance, and an HTTP context per request. A filter
//! keeps a few instances; each request is pinned to one of them for its
//! life, and calls into an instance are serialized by its lock, so
//! requests share an instance as they share an Envoy worker's VM: each in
//! its own context. An instance that traps, times out or outgrows its
//! memory is replaced; the requests still in it skip it from then on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Linker, Module, Store, TypedFunc};

use crate::host::{self, Host};
use crate::sandbox::{self, Fence, Runtime};
use crate::{FailKind, Failure, Limits};

/// Header (or trailer) fields: lower-case names, pseudo-headers
/// (`:path`, `:method`, `:authority`, `:scheme`, `:status`) first.
pub type Fields = Vec<(String, Vec<u8>)>;

/// A reply a filter sent instead of letting the request through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Fields,
    pub body: Vec<u8>,
    /// `status_code_details`, for the log.
    pub details: String,
}

/// What filters see of one request, and change.
#[derive(Debug, Default)]
pub struct Exchange {
    /// By the ABI's map type: request headers, request trailers, response
    /// headers, response trailers.
    pub maps: [Fields; 4],
    pub request_body: Vec<u8>,
    /// The chunk of the response body being offered (or all of it).
    pub response_body: Vec<u8>,
    /// Properties by dotted path (`request.path`, `sluice.model`, …).
    pub properties: Vec<(String, Vec<u8>)>,
    /// Set when a filter answers in the proxy's place.
    pub local: Option<LocalResponse>,
    /// Which of `maps` a filter changed (the host need not rebuild the
    /// others).
    pub changed: [bool; 4],
}

pub const REQUEST_HEADERS: usize = 0;
pub const RESPONSE_HEADERS: usize = 2;

/// A callback's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop here: wait for more of the body (buffering it), or a local
    /// response was sent.
    Pause,
}

type Cb1 = Option<TypedFunc<i32, ()>>;
type Cb3 = Option<TypedFunc<(i32, i32, i32), i32>>;

/// The callbacks a module exports (each optional).
struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    request_headers: Cb3,
    request_body: Cb3,
    response_headers: Cb3,
    response_body: Cb3,
    log: Cb1,
    done: Option<TypedFunc<i32, i32>>,
    delete: Cb1,
    tick: Cb1,
}

struct Inner {
    store: Store<Host>,
    cb: Callbacks,
    next_id: u32,
}

/// One instance of a filter.
struct Vm {
    inner: Mutex<Inner>,
    dead: AtomicBool,
}

/// The root context's id in every instance.
const ROOT: i32 = 1;

/// A loaded filter (`[[plugins]]` entry).
pub struct Filter {
    name: Arc<str>,
    module: Module,
    linker: Linker<Host>,
    config: Arc<[u8]>,
    limits: Limits,
    vms: Vec<Mutex<Arc<Vm>>>,
    next: AtomicUsize,
}

impl Filter {
    /// Compiles `wasm` (binary or text) and starts `instances` instances,
    /// each through `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn load(
        name: &str,
        wasm: &[u8],
        config: &[u8],
        limits: Limits,
        instances: usize,
    ) -> Result<Arc<Self>, String> {
        let rt = Runtime::get()?;
        let module = rt.compile(wasm)?;
        let linker = host::linker(rt.engine(), &module).map_err(|e| format!("{e:#}"))?;
        let mut this = Self {
            name: Arc::from(name),
            module,
            linker,
            config: Arc::from(config),
            limits,
            vms: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for _ in 0..instances.max(1) {
            let vm = this.start().map_err(|f| f.message)?;
            this.vms.push(Mutex::new(vm));
        }
        Ok(Arc::new(this))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn abi(&self, what: impl std::fmt::Display) -> Failure {
        Failure::new(FailKind::Abi, format!("plugin '{}': {what}", self.name))
    }

    /// A fresh instance with its root context configured.
    fn start(&self) -> Result<Arc<Vm>, Failure> {
        let rt = Runtime::get().map_err(|e| self.abi(e))?;
        let data = Host {
            fence: Fence::new(self.limits),
            plugin: self.name.clone(),
            config: self.config.clone(),
            memory: None,
            malloc: None,
            exchange: Exchange::default(),
            tick: None,
        };
        let mut store = sandbox::store(rt.engine(), data);
        sandbox::arm(&mut store, &self.limits);
        let fail = |store: &mut Store<Host>, e| sandbox::classify(store, &self.name, e);
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| fail(&mut store, e))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| self.abi("the module exports no 'memory'"))?;
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .ok();
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = malloc;
        macro_rules! cb {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let cb = Callbacks {
            context_create: cb!("proxy_on_context_create"),
            request_headers: cb!("proxy_on_request_headers"),
            request_body: cb!("proxy_on_request_body"),
            response_headers: cb!("proxy_on_response_headers"),
            response_body: cb!("proxy_on_response_body"),
            log: cb!("proxy_on_log"),
            done: cb!("proxy_on_done"),
            delete: cb!("proxy_on_delete"),
            tick: cb!("proxy_on_tick"),
        };
        for init in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, init) {
                f.call(&mut store, ()).map_err(|e| fail(&mut store, e))?;
                break;
            }
        }
        if let Some(f) = &cb.context_create {
            f.call(&mut store, (ROOT, 0))
                .map_err(|e| fail(&mut store, e))?;
        }
        let starts = [
            ("proxy_on_vm_start", 0),
            ("proxy_on_configure", self.config.len() as i32),
        ];
        for (name, size) in starts {
            let Ok(f) = instance.get_typed_func::<(i32, i32), i32>(&mut store, name) else {
                continue;
            };
            sandbox::arm(&mut store, &self.limits);
            if f.call(&mut store, (ROOT, size))
                .map_err(|e| fail(&mut store, e))?
                == 0
            {
                return Err(self.abi(format!("{name} refused to start it")));
            }
        }
        let tick = store.data().tick;
        let vm = Arc::new(Vm {
            inner: Mutex::new(Inner {
                store,
                cb,
                next_id: ROOT as u32 + 1,
            }),
            dead: AtomicBool::new(false),
        });
        if let (Some(period), Ok(rt)) = (tick, tokio::runtime::Handle::try_current()) {
            rt.spawn(ticks(
                Arc::downgrade(&vm),
                period,
                self.name.clone(),
                self.limits,
            ));
        }
        Ok(vm)
    }

    /// A new HTTP context for one request, in the next instance (a lost
    /// one replaced first).
    pub fn open(&self) -> Result<Stream, Failure> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.vms.len();
        let vm = {
            let mut slot = self.vms[i].lock().unwrap_or_else(|p| p.into_inner());
            if slot.dead.load(Ordering::Acquire) {
                *slot = self.start()?;
            }
            slot.clone()
        };
        let id = {
            let mut inner = vm.inner.lock().unwrap_or_else(|p| p.into_inner());
            let id = inner.next_id;
            inner.next_id = id.checked_add(1).unwrap_or(ROOT as u32 + 1);
            id as i32
        };
        let mut stream = Stream {
            vm,
            id,
            name: self.name.clone(),
            limits: self.limits,
            open: true,
        };
        let mut none = Exchange::default();
        stream.call(&mut none, |inner, id| match &inner.cb.context_create {
            Some(f) => f.call(&mut inner.store, (id, ROOT)).map(|()| 0),
            None => Ok(0),
        })?;
        Ok(stream)
    }
}

async fn ticks(vm: Weak<Vm>, period: std::time::Duration, name: Arc<str>, limits: Limits) {
    let mut every = tokio::time::interval(period);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(vm) = vm.upgrade() else { return };
        if vm.dead.load(Ordering::Acquire) {
            return;
        }
        let mut inner = vm.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        let Some(f) = inner.cb.tick.clone() else {
            return;
        };
        sandbox::arm(&mut inner.store, &limits);
        if let Err(e) = f.call(&mut inner.store, ROOT) {
            let failure = sandbox::classify(&mut inner.store, &name, e);
            tracing::warn!(plugin = %name, error = %failure, "proxy_on_tick failed; the instance is replaced");
            vm.dead.store(true, Ordering::Release);
            return;
        }
    }
}

/// One request's HTTP context in a filter instance.
pub struct Stream {
    vm: Arc<Vm>,
    id: i32,
    name: Arc<str>,
    limits: Limits,
    open: bool,
}

impl Stream {
    /// The filter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one callback with `x` as the request it sees. A lost instance
    /// is skipped (the request goes on as if the filter continued).
    fn call(
        &mut self,
        x: &mut Exchange,
        f: impl FnOnce(&mut Inner, i32) -> wasmtime::Result<i32>,
    ) -> Result<i32, Failure> {
        if self.vm.dead.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut guard = self.vm.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        std::mem::swap(&mut inner.store.data_mut().exchange, x);
        sandbox::arm(&mut inner.store, &self.limits);
        let result = f(inner, self.id);
        std::mem::swap(&mut inner.store.data_mut().exchange, x);
        result.map_err(|e| {
            let failure = sandbox::classify(&mut inner.store, &self.name, e);
            self.vm.dead.store(true, Ordering::Release);
            self.open = false;
            failure
        })
    }

    fn phase(
        &mut self,
        x: &mut Exchange,
        pick: fn(&Callbacks) -> &Cb3,
        size: usize,
        end: bool,
    ) -> Result<Flow, Failure> {
        let action = self.call(x, |inner, id| match pick(&inner.cb) {
            Some(f) => f.call(&mut inner.store, (id, size as i32, end as i32)),
            None => Ok(0),
        })?;
        Ok(if action == 0 {
            Flow::Continue
        } else {
            Flow::Pause
        })
    }

    pub fn request_headers(&mut self, x: &mut Exchange, end: bool) -> Result<Flow, Failure> {
        let n = x.maps[REQUEST_HEADERS].len();
        self.phase(x, |c| &c.request_headers, n, end)
    }

    pub fn request_body(&mut self, x: &mut Exchange, end: bool) -> Result<Flow, Failure> {
        let n = x.request_body.len();
        self.phase(x, |c| &c.request_body, n, end)
    }

    pub fn response_headers(&mut self, x: &mut Exchange, end: bool) -> Result<Flow, Failure> {
        let n = x.maps[RESPONSE_HEADERS].len();
        self.phase(x, |c| &c.response_headers, n, end)
    }

    pub fn response_body(&mut self, x: &mut Exchange, end: bool) -> Result<Flow, Failure> {
        let n = x.response_body.len();
        self.phase(x, |c| &c.response_body, n, end)
    }

    /// The end of the request: `proxy_on_log`, `proxy_on_done` and
    /// `proxy_on_delete`. Failures are logged: the answer has gone.
    pub fn finish(&mut self, x: &mut Exchange) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let result = self.call(x, |inner, id| {
            if let Some(f) = &inner.cb.log {
                f.call(&mut inner.store, id)?;
            }
            if let Some(f) = &inner.cb.done {
                f.call(&mut inner.store, id)?;
            }
            if let Some(f) = &inner.cb.delete {
                f.call(&mut inner.store, id)?;
            }
            Ok(0)
        });
        if let Err(f) = result {
            tracing::warn!(plugin = %self.name, error = %f, "a filter failed at the end of a request");
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.finish(&mut Exchange::default());
    }
}
