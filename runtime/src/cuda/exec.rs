//! Running a kernel program on the GPU: loop kernels and library kernels compiled from
//! one NVRTC module, matmuls through cuBLAS, every intermediate in one arena (`plan.rs`),
//! one stream. Rank-0 steps (scalar constants and arithmetic that fusion leaves alone)
//! are evaluated on the host by the interpreter and uploaded: they are a few bytes.
//! Values are stored as `storage.rs` decides (f32, or bf16 activations): host tensors are
//! converted on upload and download, so callers always see f32.

use super::args::{
    attention_grad_scalars, attention_scalars, head_strides, loop_args, Arg, AttnCall,
};
use super::device::{self, guarded as guard, Device};
use super::graphs::{Action, Graphs, Replays};
use super::launch::AttnForm;
use super::plan::{self, Home, Layout};
use super::storage::{self, Carry, Precision, Shadow, Storage};
use super::{cache, gemm, ids, launch, movement};
use crate::finite::{Checks, Tracker};
use crate::interp::{self, Bindings};
use crate::tensor::{Data, Tensor};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{
    CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use encdecc_codegen::cuda::{form, CudaSources, Form, Mem};
use encdecc_compiler::fuse::{KernelProgram, Step};
use encdecc_compiler::ir::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

mod finite;

// SAFETY: `#[repr(C)]`, all `i64`, the layout of `struct EncStrided`.
unsafe impl DeviceRepr for movement::Strided {}

/// An input kept on the GPU over many runs: its shape and its bytes.
type FixedInput = (Vec<usize>, CudaSlice<u8>);

/// The sizes of a run and the device addresses its launches hold (`replay_key`).
type ReplayKey = (Bindings, Vec<(String, u64)>);

/// cuBLAS's workspace while capturing: its own default on Hopper.
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// Undoes what a capture changes, however it ends (an error, or a panic that `guarded`
/// catches): steps and cuBLAS go back to the model's stream, and a capture still open is
/// ended and its graph destroyed without being instantiated. Otherwise eager runs after a
/// failed capture would put their GEMMs on the capture stream, unordered with the rest.
struct CaptureScope<'a> {
    model: &'a CudaModel,
    stream: Arc<CudaStream>,
}

impl Drop for CaptureScope<'_> {
    fn drop(&mut self) {
        *self.model.launch_on.borrow_mut() = None;
        let open = self
            .stream
            .capture_status()
            .is_ok_and(|s| s != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
        if open {
            // SAFETY: the stream is capturing (or its capture was invalidated); the graph
            // ending it returns is ours, and is destroyed once.
            unsafe {
                if let Ok(g) = cudarc::driver::result::stream::end_capture(self.stream.cu_stream())
                {
                    if !g.is_null() {
                        let _ = cudarc::driver::result::graph::destroy(g);
                    }
                }
            }
        }
        let dev = &self.model.dev;
        // SAFETY: the handle and the model's stream are live.
        let _ =
            unsafe { cudarc::cublas::result::set_stream(dev.blas, dev.stream.cu_stream() as _) };
    }
}

pub struct CudaModel {
    pub program: KernelProgram,
    pub views: HashSet<NodeId>,
    /// Fused attention gradients: the step computing each group (`plan::AttnGradSteps`).
    grads: plan::AttnGradSteps,
    /// Index inputs checked on the host before a run (`ids.rs`); `None` when some gather
    /// reads computed ids, which only the GPU checks (mid-run, before any in-place update).
    id_checks: Option<Vec<ids::IndexInput>>,
    /// How every value is stored (f32, or bf16 activations).
    pub storage: Storage,
    sources: CudaSources,
    functions: HashMap<String, CudaFunction>,
    /// Parameters on the GPU, in their storage; refilled in place by `upload_params`.
    params: RefCell<HashMap<String, CudaSlice<u8>>>,
    arena: RefCell<Option<CudaSlice<u8>>>,
    /// Outputs that stay on the GPU as the next run's parameter or input (`set_carry`).
    carry: Vec<(String, Carry)>,
    /// `carry` as (output, target) nodes, for the plan's in-place updates.
    carried: Vec<(NodeId, NodeId)>,
    /// Inputs that a carried output refills, on the GPU after the first run.
    resident: RefCell<HashMap<String, CudaSlice<u8>>>,
    /// Inputs that stay the same over many runs (`fix_inputs`: a generation's encoder
    /// keys and values), on the GPU with their shapes.
    fixed: RefCell<HashMap<String, FixedInput>>,
    /// Gather's out-of-range report: [flag, id].
    err: CudaSlice<u64>,
    /// The f64 partials of reductions split over the GPU (`launch::reduce`), reused by
    /// every such step in turn; grown on first need (a few MB at most).
    partials: RefCell<Option<CudaSlice<f64>>>,
    /// The last run's plan and the sizes it was made for: a training loop or a benchmark
    /// runs one shape over and over (planning a train step takes milliseconds).
    last_plan: RefCell<Option<(Bindings, Rc<Layout>)>>,
    /// Inputs read from the host, in buffers kept from run to run while their sizes hold.
    staged: RefCell<HashMap<String, CudaSlice<u8>>>,
    /// Whether runs replay CUDA graphs (`graphs.rs`: the setting, given the host steps).
    graphs: bool,
    replays: RefCell<Replays<ReplayKey, CudaGraph>>,
    /// The stream graphs are captured on, and cuBLAS's workspace there; made at the
    /// first capture.
    capture_stream: RefCell<Option<(Arc<CudaStream>, CudaSlice<u8>)>>,
    /// Where steps launch while capturing (`None`: the model's stream).
    launch_on: RefCell<Option<Arc<CudaStream>>>,
    /// What runs check (`set_checks`), and the values of the checking run in progress.
    checks: Checks,
    tracker: RefCell<Option<Tracker>>,
    _module: Arc<CudaModule>,
    // Last: dropped after every buffer and the module.
    pub dev: Device,
}

/// Lowers and compiles a graph for the GPU (device 0), every value in f32.
pub fn prepare(graph: &Graph) -> Result<CudaModel, String> {
    prepare_with(graph, Precision::F32)
}

/// Lowers and compiles a graph for the GPU (device 0) with values stored at `precision`.
pub fn prepare_with(graph: &Graph, precision: Precision) -> Result<CudaModel, String> {
    if precision == Precision::Int8 {
        return Err(
            "dtype int8 runs on the cpu and reference backends; the cuda backend stores f32 or bf16"
                .into(),
        );
    }
    // bf16 and i8 in the IR are the host backends' lowering; the GPU keeps f32 graphs and
    // stores them at `precision` itself.
    if let Some(n) = graph
        .dag
        .node_indices()
        .find(|&n| graph.node(n).ty.dtype.is_storage())
    {
        return Err(format!(
            "the cuda backend runs f32 graphs (with --dtype bf16 it stores them in bf16 \
             itself); `{}` is a {} value of a graph lowered for the host",
            graph
                .node(n)
                .name
                .as_deref()
                .unwrap_or(graph.node(n).op.mnemonic()),
            graph.node(n).ty.dtype.name()
        ));
    }
    let program = super::lower(graph, super::AttentionGrad::from_env()?)?;
    let graphs = Graphs::from_env()?.replays(super::host_steps(&program).len());
    let views = plan::views(&program);
    let grads = plan::attention_grad_steps(&program);
    let id_checks = ids::index_inputs(&program.graph);
    let storage = storage::storage(&program, &views, precision);
    let sources = CudaSources::with_mems(&program.kernels, &storage.kernel_mems(&program));
    let dev = device::open()?;
    let text = sources.module();
    let options = vec![format!(
        "--gpu-architecture=compute_{}{}",
        dev.cc.0, dev.cc.1
    )];
    let key = cache::key(&text, &dev.name, dev.cc, dev.driver, dev.nvrtc, &options);
    let dir = encdecc_codegen::CacheConfig::from_env().dir;
    let ptx = match dir.as_deref().and_then(|d| cache::load(d, &key)) {
        Some(p) => p,
        None => {
            let ptx = device::compile_ptx(&text, options.clone())?;
            if let Some(d) = &dir {
                if let Err(e) = cache::store(d, &key, &ptx) {
                    eprintln!("warning: CUDA kernel cache: {e}");
                }
            }
            ptx
        }
    };
    guard("loading the CUDA kernels", || {
        let module = dev
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| format!("loading the CUDA module: {e}"))?;
        let mut functions = HashMap::new();
        let names = launch::LIBRARY_FUNCTIONS
            .iter()
            .map(|s| s.to_string())
            .chain(sources.kernels.iter().map(|(n, _)| n.clone()));
        for name in names {
            let f = module
                .load_function(&name)
                .map_err(|e| format!("CUDA function `{name}`: {e}"))?;
            functions.insert(name, f);
        }
        let err = dev
            .stream
            .alloc_zeros::<u64>(2)
            .map_err(|e| e.to_string())?;
        Ok(CudaModel {
            program,
            views,
            grads,
            id_checks,
            storage,
            sources,
            functions,
            params: RefCell::new(HashMap::new()),
            carry: vec![],
            carried: vec![],
            resident: RefCell::new(HashMap::new()),
            fixed: RefCell::new(HashMap::new()),
            arena: RefCell::new(None),
            err,
            partials: RefCell::new(None),
            last_plan: RefCell::new(None),
            staged: RefCell::new(HashMap::new()),
            graphs,
            replays: RefCell::new(Replays::default()),
            capture_stream: RefCell::new(None),
            launch_on: RefCell::new(None),
            checks: Checks::default(),
            tracker: RefCell::new(None),
            _module: module,
            dev,
        })
    })
}

/// A host tensor in the layout `mem` (f32 data rounded to bf16 where stored so).
fn host_bytes(t: &Tensor, mem: Mem) -> Vec<u8> {
    match &t.data {
        Data::F32(v) if mem == Mem::Bf16 => v
            .iter()
            .flat_map(|&x| storage::to_bf16(x).to_le_bytes())
            .collect(),
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I8(v) => v.iter().map(|&b| b as u8).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
    }
}

/// Which outputs a run copies back to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    All,
    Nothing,
}

/// Wall time of a run's phases (host preparation and uploads, the steps, the carried
/// state's copies, the outputs' download), printed with `ENCDECC_PROFILE` set: the steps'
/// profile alone does not show time spent around them. `ENCDECC_PROFILE=phases` prints
/// only these, and leaves the steps as they run without it (a graph replays).
struct Phases {
    on: bool,
    since: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new(on: bool) -> Phases {
        Phases {
            on,
            since: std::time::Instant::now(),
            laps: vec![],
        }
    }

    /// Ends phase `name` once the GPU has finished it.
    fn lap(&mut self, dev: &Device, name: &'static str) -> Result<(), String> {
        if self.on {
            dev.stream.synchronize().map_err(drv)?;
            self.laps
                .push((name, self.since.elapsed().as_secs_f64() * 1e3));
            self.since = std::time::Instant::now();
        }
        Ok(())
    }

    /// Ends phase `name` on the host, without waiting for the GPU: how long enqueueing
    /// took, where the next `lap` is how much longer the GPU needed (with the per-step
    /// profile, which waits for every step, all of the steps' time falls in this one).
    fn lap_host(&mut self, name: &'static str) {
        if self.on {
            self.laps
                .push((name, self.since.elapsed().as_secs_f64() * 1e3));
            self.since = std::time::Instant::now();
        }
    }

    fn print(&self) {
        if self.on {
            let laps: Vec<String> = self
                .laps
                .iter()
                .map(|(k, ms)| format!("{k} {ms:.2} ms"))
                .collect();
            eprintln!("run phases: {}", laps.join(", "));
        }
    }
}

fn from_bytes(bytes: &[u8], mem: Mem, dtype: DType, shape: Vec<usize>) -> Tensor {
    if mem == Mem::Bf16 {
        return Tensor::f32(
            shape,
            bytes
                .chunks_exact(2)
                .map(|c| storage::from_bf16(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        );
    }
    match dtype {
        DType::F32 => Tensor::f32(
            shape,
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
        ),
        DType::I64 => Tensor::i64(
            shape,
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        ),
        DType::Bool => Tensor::bool(shape, bytes.iter().map(|&b| b != 0).collect()),
        DType::I8 => Tensor::i8(shape, bytes.iter().map(|&b| b as i8).collect()),
        // (Stored as `Mem::Bf16`, so returned above as f32; cuda::prepare refuses graphs
        // with bf16 values, which are the CPU backend's lowering.)
        DType::Bf16 => Tensor::bf16(
            shape,
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
    }
}

/// The element-size suffix of the movement kernels.
fn suffix(mem: Mem) -> &'static str {
    match mem {
        Mem::U8 => "b1",
        Mem::Bf16 => "b2",
        Mem::F32 => "b4",
        Mem::I64 => "b8",
    }
}

fn drv(e: impl std::fmt::Display) -> String {
    format!("CUDA: {e}")
}

/// Device pointers of one run.
struct Ptrs<'a> {
    layout: &'a Layout,
    arena: u64,
    params: HashMap<String, u64>,
    inputs: HashMap<String, u64>,
}

impl Ptrs<'_> {
    fn shadow(&self, s: Shadow) -> Result<u64, String> {
        self.layout
            .shadows
            .get(&s)
            .map(|off| self.arena + off)
            .ok_or_else(|| {
                format!(
                    "internal: no bf16 shadow of {:?} at step {}",
                    s.node, s.step
                )
            })
    }

    fn of(&self, n: NodeId) -> Result<u64, String> {
        match self.layout.home_of(n) {
            Some(Home::Arena(off)) => Ok(self.arena + off),
            Some(Home::Param(p)) => self
                .params
                .get(p.as_str())
                .copied()
                .ok_or(format!("no value for parameter `{p}` on the GPU")),
            Some(Home::Input(name)) => self
                .inputs
                .get(name)
                .copied()
                .ok_or(format!("missing input `{name}`")),
            None => Err(format!("value {n:?} has no storage")),
        }
    }
}

impl CudaModel {
    fn ptr(&self, s: &CudaSlice<u8>) -> u64 {
        s.device_ptr(&self.dev.stream).0
    }

    /// Copies the parameters to the GPU in their storage (bf16 weights are rounded here,
    /// once); `run` reuses them.
    pub fn upload_params(&mut self, params: &HashMap<String, Tensor>) -> Result<(), String> {
        self.set_params(params)
    }

    /// `upload_params` through a shared reference: called again (a train step's new
    /// weights), it refills the same buffers.
    pub fn set_params(&self, params: &HashMap<String, Tensor>) -> Result<(), String> {
        let g = &self.program.graph;
        let mut bufs = self.params.borrow_mut();
        for n in g.dag.node_indices() {
            let Op::Param { path, .. } = &g.node(n).op else {
                continue;
            };
            let t = params
                .get(path)
                .ok_or(format!("no value for parameter `{path}`"))?;
            let bytes = host_bytes(&interp::convert(t, g.node(n).ty.dtype), self.storage.mem(n));
            match bufs.get_mut(path) {
                Some(buf) if buf.len() == bytes.len().max(1) => {
                    if !bytes.is_empty() {
                        self.dev.stream.memcpy_htod(&bytes, buf).map_err(drv)?;
                    }
                }
                _ => {
                    let buf = self.upload(&bytes)?;
                    bufs.insert(path.clone(), buf);
                }
            }
        }
        Ok(())
    }

    fn upload(&self, bytes: &[u8]) -> Result<CudaSlice<u8>, String> {
        let mut buf = self
            .dev
            .stream
            .alloc_zeros::<u8>(bytes.len().max(1))
            .map_err(drv)?;
        if !bytes.is_empty() {
            self.dev.stream.memcpy_htod(bytes, &mut buf).map_err(drv)?;
        }
        Ok(buf)
    }

    /// Value `node`'s bytes at `ptr`, as an f32/i64/bool host tensor.
    fn download(&self, ptr: u64, node: NodeId, shape: Vec<usize>) -> Result<Tensor, String> {
        let mem = self.storage.mem(node);
        let dtype = self.program.graph.node(node).ty.dtype;
        let n: usize = shape.iter().product();
        let mut bytes = vec![0u8; n * mem.bytes() as usize];
        self.dev.stream.synchronize().map_err(drv)?;
        if !bytes.is_empty() {
            // SAFETY: `ptr` addresses at least `bytes.len()` bytes of a live buffer.
            unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut bytes, ptr) }.map_err(drv)?;
        }
        Ok(from_bytes(&bytes, mem, dtype, shape))
    }

    fn launch(&self, f: &str, l: launch::Launch, args: &[Arg]) -> Result<(), String> {
        let func = self
            .functions
            .get(f)
            .ok_or(format!("no CUDA function `{f}`"))?;
        let stream = self.stream();
        let mut b = stream.launch_builder(func);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I64(x) => b.arg(x),
                Arg::I32(x) => b.arg(x),
                Arg::U8(x) => b.arg(x),
                Arg::U16(x) => b.arg(x),
                Arg::F32(x) => b.arg(x),
                Arg::Strided(s) => b.arg(s),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: l.grid,
            block_dim: l.block,
            shared_mem_bytes: l.shared_bytes,
        };
        // SAFETY: the arguments follow the kernel's signature (`args.rs`, tested) and
        // address live buffers of the sizes the plan gave them.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| format!("launching {f}: {e}"))
    }

    /// A strided copy between two device addresses, converting between f32 and bf16
    /// storage where `to` and `from` differ.
    fn copy(
        &self,
        to: Mem,
        from: Mem,
        out: u64,
        input: u64,
        s: movement::Strided,
    ) -> Result<(), String> {
        let Some(l) = launch::elementwise(s.n as u64, self.dev.sms) else {
            return Ok(());
        };
        let f = match (to, from) {
            (Mem::Bf16, Mem::F32) => "enc_copy_f32_to_bf16".to_string(),
            (Mem::F32, Mem::Bf16) => "enc_copy_bf16_to_f32".to_string(),
            (a, b) if a == b => format!("enc_copy_{}", suffix(a)),
            (a, b) => return Err(format!("internal: a copy from {b:?} to {a:?} storage")),
        };
        self.launch(&f, l, &[Arg::Ptr(out), Arg::Ptr(input), Arg::Strided(s)])
    }

    /// Rounds the f32 value of shadow `sh` into its bf16 place.
    fn fill_shadow(&self, sh: Shadow, p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let shape = interp::resolve(&self.program.graph.node(sh.node).ty.shape, b)?;
        let n: usize = shape.iter().product();
        let s = movement::strided(&[n], &[1], &[1], 0, 0)?;
        self.copy(Mem::Bf16, Mem::F32, p.shadow(sh)?, p.of(sh.node)?, s)
    }

    /// The sizes the inputs give; a carried input already on the GPU may be left out (its
    /// shape is the fixed one of the state it holds), and so may a fixed input (its shape
    /// binds as given to `fix_inputs`).
    fn bind(&self, inputs: &HashMap<String, Tensor>) -> Result<Bindings, String> {
        let g = &self.program.graph;
        let resident = self.resident.borrow();
        let fixed = self.fixed.borrow();
        let mut b = Bindings::new();
        for n in g.inputs() {
            let Op::Input { name } = &g.node(n).op else {
                continue;
            };
            match inputs.get(name) {
                Some(t) => interp::bind(name, &g.node(n).ty.shape, &t.shape, &mut b)?,
                None if resident.contains_key(name) => {}
                None if fixed.contains_key(name) => {
                    interp::bind(name, &g.node(n).ty.shape, &fixed[name].0, &mut b)?
                }
                None => return Err(format!("missing input `{name}`")),
            }
        }
        Ok(b)
    }

    /// The carried state's current values (`set_carry`'s targets: the weights a train step
    /// updates and the inputs holding its AdamW moments), copied from the GPU: what a
    /// checkpoint or an evaluation on the host needs. A carried input not yet on the GPU
    /// (no run since `set_carry` or `drop_resident`) is left out.
    pub fn carried_state(&self) -> Result<Vec<(Carry, Tensor)>, String> {
        guard("reading the training state from the GPU", || {
            let g = &self.program.graph;
            let params = self.params.borrow();
            let resident = self.resident.borrow();
            let mut out = vec![];
            for (_, to) in &self.carry {
                let (buf, node) = match to {
                    Carry::Param(p) => (
                        params.get(p),
                        g.params().into_iter().find(
                            |&n| matches!(&g.node(n).op, Op::Param { path, .. } if path == p),
                        ),
                    ),
                    Carry::Input(i) => (
                        resident.get(i),
                        g.inputs()
                            .into_iter()
                            .find(|&n| matches!(&g.node(n).op, Op::Input { name } if name == i)),
                    ),
                };
                let (Some(buf), Some(node)) = (buf, node) else {
                    continue;
                };
                let shape = interp::resolve(&g.node(node).ty.shape, &Bindings::new())?;
                out.push((to.clone(), self.download(self.ptr(buf), node, shape)?));
            }
            Ok(out)
        })
    }

    /// Forgets the carried inputs on the GPU: the next run reads them from its inputs again
    /// (a trainer handing its state to this program after another one held it).
    pub fn drop_resident(&self) {
        self.resident.borrow_mut().clear();
    }

    fn cached_plan(&self, b: &Bindings) -> Result<Rc<Layout>, String> {
        let mut last = self.last_plan.borrow_mut();
        if let Some((lb, l)) = last.as_ref() {
            if lb == b {
                return Ok(l.clone());
            }
        }
        let l = Rc::new(self.plan(b)?);
        *last = Some((b.clone(), l.clone()));
        Ok(l)
    }

    /// The memory plan of a run with these inputs.
    pub fn plan(&self, b: &Bindings) -> Result<Layout, String> {
        plan::plan_carried(&self.program, &self.views, &self.storage, b, &self.carried)
    }

    pub fn precision(&self) -> Precision {
        self.storage.precision
    }

    /// Keeps state on the GPU between runs (a train step's weights and AdamW moments): after
    /// each run, output `out` is copied on the device into the parameter or input it names
    /// and is not returned; a carried input is read from the host on the first run only.
    /// Each output must be stored as its target (f32 master weights and moments are). An
    /// output that the plan writes straight into its target (`plan::plan_carried`) needs no
    /// copy.
    pub fn set_carry(&mut self, carry: Vec<(String, Carry)>) -> Result<(), String> {
        self.carried = storage::carry_nodes(&self.program, &self.storage, &carry)?;
        // An input no longer carried is read from the host again.
        self.resident.get_mut().retain(|name, _| {
            carry
                .iter()
                .any(|(_, to)| *to == Carry::Input(name.clone()))
        });
        self.carry = carry;
        // The plan depends on what is carried (outputs written in place), and so do the
        // graphs captured from it.
        *self.last_plan.get_mut() = None;
        self.replays.get_mut().clear();
        Ok(())
    }

    /// Copies `inputs` to the GPU once: later runs read them from there when their input
    /// map leaves them out (a decode step's encoder keys and values, the same for every
    /// token, would otherwise cross PCIe per token). Replaces what was fixed before; ids
    /// among them are checked here.
    pub fn fix_inputs(&self, inputs: &HashMap<String, Tensor>) -> Result<(), String> {
        guard("copying inputs to the GPU", || {
            let g = &self.program.graph;
            let mut fixed = HashMap::new();
            let mut b = Bindings::new();
            for n in g.inputs() {
                let Op::Input { name } = &g.node(n).op else {
                    continue;
                };
                let Some(t) = inputs.get(name) else { continue };
                if self
                    .carry
                    .iter()
                    .any(|(_, to)| *to == Carry::Input(name.clone()))
                {
                    return Err(format!("input `{name}` is carried; it cannot be fixed"));
                }
                interp::bind(name, &g.node(n).ty.shape, &t.shape, &mut b)?;
                let bytes =
                    host_bytes(&interp::convert(t, g.node(n).ty.dtype), self.storage.mem(n));
                fixed.insert(name.clone(), (t.shape.clone(), self.upload(&bytes)?));
            }
            if let Some(unknown) = inputs.keys().find(|k| !fixed.contains_key(*k)) {
                return Err(format!("the program has no input `{unknown}` to fix"));
            }
            if let Some(checks) = &self.id_checks {
                ids::check_ids(g, checks, inputs, &b)?;
            }
            *self.fixed.borrow_mut() = fixed;
            Ok(())
        })
    }

    /// Whether a run checks every id before it launches anything (`ids.rs`): each gather
    /// reads an input that comes from the host in the run's map or through `fix_inputs`,
    /// none a carried one (whose ids only the GPU sees).
    fn ids_checked_on_host(&self) -> bool {
        self.id_checks.as_ref().is_some_and(|checks| {
            checks.iter().all(|c| {
                !self
                    .carry
                    .iter()
                    .any(|(_, to)| *to == Carry::Input(c.input.clone()))
            })
        })
    }

    /// Frees the inputs `fix_inputs` put on the GPU.
    pub fn unfix_inputs(&self) {
        self.fixed.borrow_mut().clear();
    }

    /// Runs the program; parameters must have been uploaded. With `checks.finite`, a
    /// non-finite output is an error naming the step that first produced one.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
        self.run_checked(inputs)?.into_result()
    }

    /// The run itself; `run_checked` (`finite.rs`) wraps it.
    fn run_unchecked(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, String> {
        guard("running the model", || {
            self.run_unguarded(inputs, Fetch::All)
        })
    }

    /// Runs the program and waits for the GPU, leaving the outputs on the device (as a
    /// PyTorch forward leaves its logits): for benchmarks of the computation itself, which
    /// a copy of the logits to the host would otherwise dominate on large vocabularies.
    pub fn run_on_device(&self, inputs: &HashMap<String, Tensor>) -> Result<(), String> {
        guard("running the model", || {
            self.run_unguarded(inputs, Fetch::Nothing).map(|_| ())
        })
    }

    fn run_unguarded(
        &self,
        inputs: &HashMap<String, Tensor>,
        fetch: Fetch,
    ) -> Result<HashMap<String, Tensor>, String> {
        // `phases`: only the run's phases, steps launched (or replayed) as without it.
        let setting = std::env::var("ENCDECC_PROFILE").ok();
        let profile = setting.as_deref().is_some_and(|s| s != "phases");
        let mut phases = Phases::new(setting.is_some());
        let g = &self.program.graph;
        let b = self.bind(inputs)?;
        if let Some(checks) = &self.id_checks {
            ids::check_ids(g, checks, inputs, &b)?;
        }
        let layout = self.cached_plan(&b)?;
        {
            let mut arena = self.arena.borrow_mut();
            if arena
                .as_ref()
                .is_none_or(|a| (a.len() as u64) < layout.arena_bytes)
            {
                *arena = None;
                *arena = Some(
                    self.dev
                        .stream
                        .alloc_zeros::<u8>(layout.arena_bytes.max(1) as usize)
                        .map_err(|e| {
                            format!("allocating the {} byte arena: {e}", layout.arena_bytes)
                        })?,
                );
            }
        }
        let arena = self.arena.borrow();
        let arena = arena.as_ref().expect("allocated");
        let mut staged = self.staged.borrow_mut();
        let mut resident = self.resident.borrow_mut();
        let fixed = self.fixed.borrow();
        for n in g.dag.node_indices() {
            if let Op::Input { name } = &g.node(n).op {
                let carried = self
                    .carry
                    .iter()
                    .any(|(_, to)| *to == Carry::Input(name.clone()));
                if carried && resident.contains_key(name) {
                    continue;
                }
                if !inputs.contains_key(name) && fixed.contains_key(name) {
                    continue;
                }
                let t = inputs.get(name).ok_or(format!("missing input `{name}`"))?;
                let bytes =
                    host_bytes(&interp::convert(t, g.node(n).ty.dtype), self.storage.mem(n));
                if carried {
                    resident.insert(name.clone(), self.upload(&bytes)?);
                } else {
                    self.stage(&mut staged, name, &bytes)?;
                }
            }
        }
        phases.lap(&self.dev, "inputs")?;
        let ptrs = Ptrs {
            layout: &layout,
            arena: self.ptr(arena),
            params: self
                .params
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), self.ptr(v)))
                .collect(),
            inputs: fixed
                .iter()
                .map(|(k, (_, v))| (k, v))
                .chain(staged.iter().filter(|(k, _)| inputs.contains_key(*k)))
                .chain(resident.iter())
                .map(|(k, v)| (k.clone(), self.ptr(v)))
                .collect(),
        };
        // SAFETY: `err` is two live u64s.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                self.ptr_u64(&self.err),
                0,
                16,
                self.dev.stream.cu_stream(),
            )
        }
        .map_err(drv)?;
        // A graph replays the steps only where none waits for the host in mid-run.
        let replays = self.graphs
            && !profile
            && !self.checking()
            && (layout.first_update.is_none() || self.ids_checked_on_host());
        if replays {
            self.replay_steps(&layout, &ptrs, &b)?;
        } else {
            self.launch_steps(&layout, &ptrs, &b, profile)?;
        }
        phases.lap_host("launch");
        self.dev.stream.synchronize().map_err(drv)?;
        phases.lap(&self.dev, "steps")?;
        self.check_gathers()?;
        let mut out = HashMap::new();
        for (name, to) in &self.carry {
            let n = g.output(name).expect("checked by set_carry");
            let shape = interp::resolve(&g.node(n).ty.shape, &b)?;
            let bytes = self.storage.mem(n).bytes() as usize * shape.iter().product::<usize>();
            let dst = match to {
                Carry::Param(p) => ptrs.params.get(p).copied(),
                Carry::Input(i) => ptrs.inputs.get(i).copied(),
            }
            .ok_or_else(|| format!("carry: no GPU buffer for {to:?}"))?;
            let src = ptrs.of(n)?;
            if bytes > 0 && src != dst {
                // SAFETY: both addresses hold `bytes` bytes (same storage and shape, checked
                // by `set_carry`); the stream has finished every reader of `dst`.
                unsafe { cudarc::driver::result::memcpy_dtod_sync(dst, src, bytes) }
                    .map_err(drv)?;
            }
        }
        phases.lap(&self.dev, "carry")?;
        for (name, n) in &g.outputs {
            if fetch == Fetch::Nothing || self.carry.iter().any(|(c, _)| c == name) {
                continue;
            }
            let ty = &g.node(*n).ty;
            let shape = interp::resolve(&ty.shape, &b)?;
            out.insert(name.clone(), self.download(ptrs.of(*n)?, *n, shape)?);
        }
        phases.lap(&self.dev, "outputs")?;
        phases.print();
        Ok(out)
    }

    /// Copies an input's bytes into its staging buffer, kept from run to run (a graph
    /// addresses it), made anew only when the input's size changes.
    fn stage(
        &self,
        staged: &mut HashMap<String, CudaSlice<u8>>,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        match staged.get_mut(name) {
            Some(buf) if buf.len() == bytes.len().max(1) => {
                if !bytes.is_empty() {
                    // Ordered after the last run's readers: one stream.
                    self.dev.stream.memcpy_htod(bytes, buf).map_err(drv)?;
                }
            }
            _ => {
                staged.insert(name.to_string(), self.upload(bytes)?);
            }
        }
        Ok(())
    }

    /// Launches the steps one by one; with `profile`, waits for each and prints where the
    /// time went.
    fn launch_steps(
        &self,
        layout: &Layout,
        ptrs: &Ptrs,
        b: &Bindings,
        profile: bool,
    ) -> Result<(), String> {
        let g = &self.program.graph;
        let mut spent: HashMap<&'static str, (f64, usize)> = HashMap::new();
        // The slowest steps one by one: which kernel, over which shape.
        let mut slowest: Vec<(f64, usize)> = vec![];
        let mut shadows = self.storage.shadows.iter().peekable();
        self.check_leaves(ptrs, b)?;
        for (i, s) in self.program.steps.iter().enumerate() {
            // Ids only the GPU can check: before the state is touched (this waits for it).
            if Some(i) == layout.first_update && !self.ids_checked_on_host() {
                self.check_gathers()?;
            }
            let t0 = std::time::Instant::now();
            while let Some(sh) = shadows.next_if(|sh| sh.step == i) {
                self.fill_shadow(*sh, ptrs, b)?;
            }
            self.step(i, s, ptrs, b)?;
            self.check_step(i, s, ptrs, b)?;
            if profile {
                self.dev.stream.synchronize().map_err(drv)?;
                let kind = match s {
                    Step::Loop { .. } => "loop kernel",
                    Step::Node(n) => g.node(*n).op.mnemonic(),
                };
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let e = spent.entry(kind).or_default();
                e.0 += ms;
                e.1 += 1;
                slowest.push((ms, i));
            }
        }
        if profile {
            let mut v: Vec<_> = spent.into_iter().collect();
            v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            for (k, (ms, n)) in v {
                eprintln!("{k:>14} {ms:9.2} ms  {n:5} steps");
            }
            slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
            for &(ms, i) in slowest.iter().take(12) {
                eprintln!("  step {i:5} {ms:8.3} ms  {}", self.describe(i, b));
            }
        }
        Ok(())
    }

    /// The steps as a CUDA graph where `graphs::Replays` says so: captured on the second
    /// run with the same sizes and buffers, replayed from the third; launched one by one
    /// otherwise, and for good where a capture fails (with one warning).
    fn replay_steps(&self, layout: &Layout, ptrs: &Ptrs, b: &Bindings) -> Result<(), String> {
        let key = self.replay_key(ptrs, b);
        let action = self.replays.borrow_mut().next(&key);
        let graphed = match action {
            Action::Eager => {
                self.launch_steps(layout, ptrs, b, false)?;
                // The run may have grown the reductions' partials: the next run's key is
                // the one to capture.
                let after = self.replay_key(ptrs, b);
                self.replays.borrow_mut().warmed(after);
                return Ok(());
            }
            Action::Replay => self.launch_graph(&key),
            Action::Capture => self.capture(ptrs, b).and_then(|graph| {
                self.replays.borrow_mut().captured(key.clone(), graph);
                self.launch_graph(&key)
            }),
        };
        // Nothing of the run was launched: it runs eagerly, and so does its key from now on.
        graphed.or_else(|e| {
            if self.replays.borrow_mut().refuse(key) {
                eprintln!("warning: CUDA graph failed, steps are launched one by one: {e}");
            }
            self.launch_steps(layout, ptrs, b, false)
        })
    }

    /// What a graph captured from this run depends on: the sizes, and every device address
    /// its launches hold (arena, parameters, inputs, the reductions' partials).
    fn replay_key(&self, ptrs: &Ptrs, b: &Bindings) -> ReplayKey {
        let mut addresses: Vec<(String, u64)> = ptrs
            .params
            .iter()
            .chain(ptrs.inputs.iter())
            .map(|(k, &v)| (k.clone(), v))
            .collect();
        addresses.sort_unstable();
        let partials = self
            .partials
            .borrow()
            .as_ref()
            .map_or(0, |p| p.device_ptr(&self.dev.stream).0);
        addresses.push(("(arena)".into(), ptrs.arena));
        addresses.push(("(partials)".into(), partials));
        (b.clone(), addresses)
    }

    /// Launches the graph captured for `key` on the model's stream, after its uploads.
    fn launch_graph(&self, key: &ReplayKey) -> Result<(), String> {
        let replays = self.replays.borrow();
        let graph = replays
            .graph(key)
            .ok_or("internal: no CUDA graph to replay")?;
        // SAFETY: a graph instantiated from this context's launches, whose buffers (the
        // key's addresses) are live.
        unsafe {
            cudarc::driver::result::graph::launch(
                graph.cu_graph_exec(),
                self.dev.stream.cu_stream(),
            )
        }
        .map_err(drv)
    }

    /// Records the steps into a graph on the capture stream (the model's own stream is the
    /// legacy default one, which cannot be captured); cuBLAS is pointed at it, with its
    /// own workspace, for the time of the capture.
    fn capture(&self, ptrs: &Ptrs, b: &Bindings) -> Result<CudaGraph, String> {
        let mut side = self.capture_stream.borrow_mut();
        if side.is_none() {
            let stream = self.dev.ctx.new_stream().map_err(drv)?;
            let workspace = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE).map_err(drv)?;
            stream.synchronize().map_err(drv)?;
            *side = Some((stream, workspace));
        }
        let (stream, workspace) = side.as_ref().expect("made");
        let scope = CaptureScope {
            model: self,
            stream: stream.clone(),
        };
        self.blas_on(stream, Some(workspace))?;
        *self.launch_on.borrow_mut() = Some(stream.clone());
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv)?;
        self.capture_steps(ptrs, b)?;
        let graph = stream
            .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
            .map_err(drv)?
            .ok_or("the capture recorded nothing")?;
        // Back on the model's stream, checked here (the scope's own reset cannot report).
        drop(scope);
        self.blas_on(&self.dev.stream, None)?;
        Ok(graph)
    }

    /// The steps, launched on the capture stream; a step that needs the host stops the
    /// capture with an error.
    fn capture_steps(&self, ptrs: &Ptrs, b: &Bindings) -> Result<(), String> {
        let mut shadows = self.storage.shadows.iter().peekable();
        for (i, s) in self.program.steps.iter().enumerate() {
            while let Some(sh) = shadows.next_if(|sh| sh.step == i) {
                self.fill_shadow(*sh, ptrs, b)?;
            }
            self.step(i, s, ptrs, b)?;
        }
        Ok(())
    }

    /// Points cuBLAS at `stream` (setting a stream resets its workspace to cuBLAS's own
    /// pool; a capture gives it `workspace`, which outlives the graph).
    fn blas_on(
        &self,
        stream: &Arc<CudaStream>,
        workspace: Option<&CudaSlice<u8>>,
    ) -> Result<(), String> {
        // SAFETY: the handle and stream are live.
        unsafe { cudarc::cublas::result::set_stream(self.dev.blas, stream.cu_stream() as _) }
            .map_err(|e| format!("cuBLAS: {e:?}"))?;
        // A failure below leaves cuBLAS on `stream`: the capture's scope puts it back.
        if let Some(w) = workspace {
            // SAFETY: `w` is a live device buffer of `w.len()` bytes, kept as long as the
            // model (and its graphs).
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    self.dev.blas,
                    w.device_ptr(stream).0 as *mut std::ffi::c_void,
                    w.len(),
                )
            }
            .result()
            .map_err(|e| format!("cuBLAS workspace: {e:?}"))?;
        }
        Ok(())
    }

    /// The stream steps launch on: the capture stream while capturing, else the model's.
    fn stream(&self) -> Arc<CudaStream> {
        self.launch_on
            .borrow()
            .clone()
            .unwrap_or_else(|| self.dev.stream.clone())
    }

    /// Whether the steps are being recorded into a graph (a step that needs the host
    /// cannot be).
    fn capturing(&self) -> bool {
        self.launch_on.borrow().is_some()
    }

    fn step(&self, i: usize, s: &Step, p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let g = &self.program.graph;
        let shape_of = |n: NodeId| interp::resolve(&g.node(n).ty.shape, b);
        match s {
            Step::Loop {
                kernel,
                space,
                inputs,
                outputs,
            } => {
                let k = &self.program.kernels[*kernel];
                let space = interp::resolve(space, b)?;
                let ins = inputs
                    .iter()
                    .map(|&n| p.of(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let outs = outputs
                    .iter()
                    .map(|&n| p.of(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let shapes = inputs
                    .iter()
                    .map(|&n| shape_of(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let args = loop_args(k, &ins, &outs, &space, &shapes)?;
                let inner = *space.last().unwrap_or(&1) as u64;
                let total: u64 = space.iter().map(|&x| x as u64).product();
                let l = match form(k) {
                    Form::Elementwise => launch::elementwise(total, self.dev.sms),
                    Form::Rows if inner == 0 => None,
                    Form::Rows => launch::rows(total / inner, inner, self.dev.sms),
                };
                match l {
                    Some(l) => self.launch(&self.sources.function_of[*kernel], l, &args),
                    None => Ok(()),
                }
            }
            Step::Node(n) => self.node(i, *n, p, b),
        }
    }

    fn node(&self, i: usize, n: NodeId, p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let g = &self.program.graph;
        let node = g.node(n);
        let ops = g.operands(n);
        let shape_of = |n: NodeId| interp::resolve(&g.node(n).ty.shape, b);
        let mem = |x: NodeId| self.storage.mem(x);
        if self.views.contains(&n) {
            return Ok(());
        }
        if super::host_step(&node.op) {
            return self.on_host(n, &ops, p, b);
        }
        match &node.op {
            // Same storage as the operand (`plan.rs`).
            Op::Reshape => Ok(()),
            Op::Permute { perm } => {
                let s = movement::permute(&shape_of(ops[0])?, perm)?;
                self.copy(mem(n), mem(ops[0]), p.of(n)?, p.of(ops[0])?, s)
            }
            Op::Slice { axis, start, end } => {
                let s = movement::slice(&shape_of(ops[0])?, *axis, *start as usize, *end as usize)?;
                self.copy(mem(n), mem(ops[0]), p.of(n)?, p.of(ops[0])?, s)
            }
            Op::Expand => {
                let s = movement::expand(&shape_of(ops[0])?, &shape_of(n)?)?;
                self.copy(mem(n), mem(ops[0]), p.of(n)?, p.of(ops[0])?, s)
            }
            Op::Concat { axis } => {
                let out_shape = shape_of(n)?;
                let mut at = 0;
                for &o in &ops {
                    let part = shape_of(o)?;
                    let s = movement::concat_part(&part, &out_shape, *axis, at)?;
                    self.copy(mem(n), mem(o), p.of(n)?, p.of(o)?, s)?;
                    at += part[*axis];
                }
                Ok(())
            }
            // A constant is filled in on the stream: through the host, each of a train
            // step's couple of dozen constants was a synchronisation in mid-run.
            Op::Const { value } => self.fill(n, value.0, p, b),
            Op::Shift { axis, offset, fill } => {
                let shape = shape_of(n)?;
                self.fill(n, fill.0, p, b)?;
                match movement::shift(&shape, *axis, *offset)? {
                    Some(s) => self.copy(mem(n), mem(ops[0]), p.of(n)?, p.of(ops[0])?, s),
                    None => Ok(()),
                }
            }
            Op::Gather => {
                let table = shape_of(ops[0])?;
                let idx = shape_of(ops[1])?;
                if g.node(ops[1]).ty.dtype != DType::I64 {
                    return Err("gather indices must be i64".into());
                }
                let count: usize = idx.iter().product();
                let row: usize = table[1..].iter().product();
                let Some(l) = launch::elementwise((count * row) as u64, self.dev.sms) else {
                    return Ok(());
                };
                if mem(n) != mem(ops[0]) {
                    return Err("internal: a gather changes the table's storage".into());
                }
                self.launch(
                    &format!("enc_gather_{}", suffix(mem(n))),
                    l,
                    &[
                        Arg::Ptr(p.of(n)?),
                        Arg::Ptr(p.of(ops[0])?),
                        Arg::Ptr(p.of(ops[1])?),
                        Arg::I64(count as i64),
                        Arg::I64(row as i64),
                        Arg::I64(table[0] as i64),
                        Arg::Ptr(self.ptr_u64(&self.err)),
                    ],
                )
            }
            Op::Reduce { op, axis } => {
                let s = shape_of(ops[0])?;
                let outer: usize = s[..*axis].iter().product();
                let inner: usize = s[axis + 1..].iter().product();
                self.reduce(*op, [outer, s[*axis], inner], ops[0], n, p)
            }
            Op::ScatterAdd => self.scatter_add(n, &ops, p, b),
            Op::MatMul => self.matmul(i, n, &ops, p, b),
            Op::Attention(a) => self.attention(i, a, n, &ops, p, b),
            // The group's first step computes every sibling; the others have nothing to do.
            Op::AttentionGrad { attrs, .. } => match self.grads.first.get(&i) {
                Some(group) => self.attention_grad(i, attrs, group, &ops, p, b),
                None => Ok(()),
            },
            other => Err(format!(
                "internal: no device step for `{}`",
                other.mnemonic()
            )),
        }
    }

    /// Fills `n`'s storage with `value` as its dtype (in its storage: f32, bf16, i64 or
    /// bool bytes), as the interpreter's `fill`.
    fn fill(&self, n: NodeId, value: f64, p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let node = self.program.graph.node(n);
        let total: usize = interp::resolve(&node.ty.shape, b)?.iter().product();
        let Some(l) = launch::elementwise(total as u64, self.dev.sms) else {
            return Ok(());
        };
        let one = host_bytes(
            &interp::fill(vec![], node.ty.dtype, value),
            self.storage.mem(n),
        );
        let mut word = [0u8; 8];
        word[..one.len()].copy_from_slice(&one);
        let (name, value) = match self.storage.mem(n) {
            Mem::F32 => (
                "enc_fill_b4",
                Arg::I32(i32::from_le_bytes(word[..4].try_into().expect("4"))),
            ),
            Mem::Bf16 => (
                "enc_fill_b2",
                Arg::U16(u16::from_le_bytes([word[0], word[1]])),
            ),
            Mem::I64 => ("enc_fill_b8", Arg::Ptr(u64::from_le_bytes(word))),
            Mem::U8 => ("enc_fill_b1", Arg::U8(word[0])),
        };
        self.launch(
            name,
            l,
            &[Arg::Ptr(p.of(n)?), value, Arg::I64(total as i64)],
        )
    }

    /// Waits for the GPU and reports an id out of range of an embedding table, if a gather
    /// (or a gather's gradient) met one.
    fn check_gathers(&self) -> Result<(), String> {
        self.dev.stream.synchronize().map_err(drv)?;
        let err = self.dev.stream.clone_dtoh(&self.err).map_err(drv)?;
        if err[0] != 0 {
            return Err(format!(
                "id {} is out of range of an embedding table (gather)",
                err[1] as i64
            ));
        }
        Ok(())
    }

    /// A step for the profile: the kernel or op, and the shapes it writes and reads.
    fn describe(&self, i: usize, b: &Bindings) -> String {
        let g = &self.program.graph;
        let shape = |n: &NodeId| {
            interp::resolve(&g.node(*n).ty.shape, b).map_or_else(|e| e, |s| format!("{s:?}"))
        };
        let shapes = |ns: &[NodeId]| ns.iter().map(shape).collect::<Vec<_>>().join(" ");
        match &self.program.steps[i] {
            Step::Loop {
                kernel,
                inputs,
                outputs,
                ..
            } => {
                let k = &self.program.kernels[*kernel];
                format!(
                    "{} ({:?}) writes {} reads {}",
                    k.name,
                    form(k),
                    shapes(outputs),
                    shapes(inputs)
                )
            }
            Step::Node(n) => format!(
                "{} writes {} reads {}",
                g.node(*n).op.mnemonic(),
                shape(n),
                shapes(&g.operands(*n))
            ),
        }
    }

    /// `to = reduce(from)` over the middle axis of `from` seen as `[outer, n, inner]`.
    fn reduce(
        &self,
        op: ReduceOp,
        [outer, n, inner]: [usize; 3],
        from: NodeId,
        to: NodeId,
        p: &Ptrs,
    ) -> Result<(), String> {
        let Some(r) = launch::reduce(outer as u64, n as u64, inner as u64, self.dev.sms)? else {
            return Ok(());
        };
        let mem = |n: NodeId| self.storage.mem(n);
        let (name, parts_name) = match (mem(from), mem(to)) {
            (Mem::F32, Mem::F32) => ("enc_reduce_f32", "enc_reduce_parts_f32"),
            (Mem::Bf16, Mem::F32) => ("enc_reduce_bf16", "enc_reduce_parts_f32"),
            (Mem::I64, Mem::I64) => ("enc_reduce_i64", "enc_reduce_parts_i64"),
            (Mem::U8, Mem::U8) => ("enc_reduce_u8", "enc_reduce_parts_u8"),
            (a, o) => return Err(format!("internal: a reduction from {a:?} to {o:?} storage")),
        };
        let outputs = outer * inner;
        let partials = if r.parts > 1 {
            let want = r.parts as usize * outputs;
            let mut buf = self.partials.borrow_mut();
            if buf.as_ref().is_none_or(|b| b.len() < want) {
                if self.capturing() {
                    // The warm-up run grew it: a different plan is being captured.
                    return Err("a reduction's partials would grow while capturing".into());
                }
                *buf = None;
                *buf = Some(self.dev.stream.alloc_zeros::<f64>(want).map_err(drv)?);
            }
            let ptr = buf
                .as_ref()
                .expect("allocated")
                .device_ptr(&self.dev.stream)
                .0;
            ptr
        } else {
            0
        };
        let op = Arg::I32((op == ReduceOp::Max) as i32);
        self.launch(
            name,
            r.launch,
            &[
                Arg::Ptr(p.of(to)?),
                Arg::Ptr(partials),
                Arg::Ptr(p.of(from)?),
                Arg::I64(outer as i64),
                Arg::I64(n as i64),
                Arg::I64(inner as i64),
                op,
            ],
        )?;
        if r.parts > 1 {
            let l = launch::elementwise(outputs as u64, self.dev.sms).expect("outputs > 0");
            self.launch(
                parts_name,
                l,
                &[
                    Arg::Ptr(p.of(to)?),
                    Arg::Ptr(partials),
                    Arg::I64(outputs as i64),
                    Arg::I64(r.parts as i64),
                    op,
                ],
            )?;
        }
        Ok(())
    }

    fn ptr_u64(&self, s: &CudaSlice<u64>) -> u64 {
        s.device_ptr(&self.dev.stream).0
    }

    /// An operand read in place through a view: (storage node, transposed/time-major).
    fn through_view(&self, o: NodeId) -> (NodeId, bool) {
        if self.views.contains(&o) {
            (self.program.graph.operands(o)[0], true)
        } else {
            (o, false)
        }
    }

    /// Where step `i` reads operand `o` (through a view: `stored`), and in which storage:
    /// its bf16 shadow when it has one.
    fn read(&self, i: usize, stored: NodeId, p: &Ptrs) -> Result<(u64, Mem), String> {
        let root = p.layout.root.get(&stored).copied().unwrap_or(stored);
        let sh = Shadow {
            step: i,
            node: root,
        };
        if self.storage.shadowed(i, root) {
            Ok((p.shadow(sh)?, Mem::Bf16))
        } else {
            Ok((p.of(stored)?, self.storage.mem(stored)))
        }
    }

    /// A gather's gradient: an f32 table, zeroed or a copy of the base (none when the plan
    /// put the table over the base, `plan.rs`), then rows added with atomics.
    fn scatter_add(&self, n: NodeId, ops: &[NodeId], p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let g = &self.program.graph;
        let shape_of = |n: NodeId| interp::resolve(&g.node(n).ty.shape, b);
        let out = shape_of(n)?;
        if self.storage.mem(n) != Mem::F32 || g.node(ops[0]).ty.dtype != DType::I64 {
            return Err("scatter_add: i64 indices into an f32 table only".into());
        }
        let rows = out[0];
        let row: usize = out[1..].iter().product();
        let count: usize = shape_of(ops[0])?.iter().product();
        let bytes = rows * row * 4;
        if let Some(&base) = ops.get(2) {
            if self.storage.mem(base) != Mem::F32 {
                return Err("internal: scatter_add onto a table not stored as f32".into());
            }
            let (to, from) = (p.of(n)?, p.of(base)?);
            if to != from {
                let s = movement::strided(&[rows * row], &[1], &[1], 0, 0)?;
                self.copy(Mem::F32, Mem::F32, to, from, s)?;
            }
        } else if bytes > 0 {
            // SAFETY: the plan gave `n` `bytes` bytes.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    p.of(n)?,
                    0,
                    bytes,
                    self.stream().cu_stream(),
                )
            }
            .map_err(drv)?;
        }
        let Some(l) = launch::elementwise((count * row) as u64, self.dev.sms) else {
            return Ok(());
        };
        let f = match self.storage.mem(ops[1]) {
            Mem::F32 => "enc_scatter_add_f32",
            Mem::Bf16 => "enc_scatter_add_bf16",
            other => return Err(format!("scatter_add of {other:?} rows")),
        };
        self.launch(
            f,
            l,
            &[
                Arg::Ptr(p.of(n)?),
                Arg::Ptr(p.of(ops[0])?),
                Arg::Ptr(p.of(ops[1])?),
                Arg::I64(count as i64),
                Arg::I64(row as i64),
                Arg::I64(rows as i64),
                Arg::Ptr(self.ptr_u64(&self.err)),
            ],
        )
    }

    fn matmul(
        &self,
        i: usize,
        n: NodeId,
        ops: &[NodeId],
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(), String> {
        let g = &self.program.graph;
        let shape_of = |n: NodeId| interp::resolve(&g.node(n).ty.shape, b);
        let (a, a_t) = self.through_view(ops[0]);
        let (bm, b_t) = self.through_view(ops[1]);
        let ((pb, mem_a), (pa, mem_b)) = (self.read(i, a, p)?, self.read(i, bm, p)?);
        let types = gemm::gemm_types(mem_a, mem_b, self.storage.mem(n))?;
        let (ash, bsh) = (shape_of(a)?, shape_of(bm)?);
        let calls = gemm::plan(
            &gemm::Operand {
                shape: &ash,
                transposed: a_t,
            },
            &gemm::Operand {
                shape: &bsh,
                transposed: b_t,
            },
            &shape_of(n)?,
        )?;
        let pc = p.of(n)?;
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        if types.operands == gemm::BlasType::Bf16 {
            return self.gemm_ex(&calls, types, [pa, pb, pc], &op);
        }
        for c in calls {
            // SAFETY: the plan's offsets and strides stay inside the operands (tested
            // against the interpreter in `gemm.rs`); the handle runs on our stream.
            unsafe {
                cudarc::cublas::result::sgemm_strided_batched(
                    self.dev.blas,
                    op(c.trans_a),
                    op(c.trans_b),
                    c.m,
                    c.n,
                    c.k,
                    &alpha,
                    (pa + 4 * c.a_off as u64) as *const f32,
                    c.lda,
                    c.stride_a,
                    (pb + 4 * c.b_off as u64) as *const f32,
                    c.ldb,
                    c.stride_b,
                    &beta,
                    (pc + 4 * c.c_off as u64) as *mut f32,
                    c.ldc,
                    c.stride_c,
                    c.batch,
                )
            }
            .map_err(|e| format!("cuBLAS sgemm: {e:?}"))?;
        }
        Ok(())
    }

    /// Matmul calls through `cublasGemmStridedBatchedEx` with f32 accumulation
    /// (`CUBLAS_COMPUTE_32F`): bf16 operands with a bf16 or f32 result (or f32 throughout).
    fn gemm_ex(
        &self,
        calls: &[gemm::GemmCall],
        types: gemm::GemmTypes,
        [pa, pb, pc]: [u64; 3],
        op: &dyn Fn(bool) -> cublasOperation_t,
    ) -> Result<(), String> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        let ty = |t: gemm::BlasType| match t {
            gemm::BlasType::F32 => cudaDataType::CUDA_R_32F,
            gemm::BlasType::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let (eo, ec) = types.bytes();
        let (alpha, beta) = (1.0f32, 0.0f32);
        for c in calls {
            // SAFETY: as `sgemm_strided_batched` above; offsets scaled by element size.
            unsafe {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    self.dev.blas,
                    op(c.trans_a),
                    op(c.trans_b),
                    c.m,
                    c.n,
                    c.k,
                    &alpha as *const f32 as *const _,
                    (pa + eo * c.a_off as u64) as *const _,
                    ty(types.operands),
                    c.lda,
                    c.stride_a,
                    (pb + eo * c.b_off as u64) as *const _,
                    ty(types.operands),
                    c.ldb,
                    c.stride_b,
                    &beta as *const f32 as *const _,
                    (pc + ec * c.c_off as u64) as *mut _,
                    ty(types.result),
                    c.ldc,
                    c.stride_c,
                    c.batch,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| format!("cuBLAS GemmStridedBatchedEx: {e:?}"))?;
        }
        Ok(())
    }

    fn attention(
        &self,
        i: usize,
        a: &AttentionAttrs,
        n: NodeId,
        ops: &[NodeId],
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(), String> {
        let operand = |o: usize| self.heads_operand(i, ops[o], p, b);
        let ((q, mq, qs, qst), (k, mk, ks, kst), (v, mv, vs, vst)) =
            (operand(0)?, operand(1)?, operand(2)?);
        let mask = match ops.get(3) {
            Some(&m) => p.of(m)?,
            None => 0,
        };
        let call = AttnCall::of(qs, ks, vs, [qst, kst, vst]);
        let scalars = attention_scalars(a, &call)?;
        let Some((form, l)) = launch::attention(
            [qs[0], call.hq, call.tq, call.tk],
            call.d,
            call.dv,
            self.dev.sms,
        )?
        else {
            return Ok(());
        };
        let storage = match (mq, mk, mv, self.storage.mem(n)) {
            (Mem::F32, Mem::F32, Mem::F32, Mem::F32) => "f32",
            (Mem::Bf16, Mem::Bf16, Mem::Bf16, Mem::Bf16) => "bf16",
            (Mem::Bf16, Mem::Bf16, Mem::Bf16, Mem::F32) => "bf16_f32",
            other => return Err(format!("internal: attention over {other:?} storage")),
        };
        let f = match form {
            AttnForm::Rows => format!("enc_attention_{storage}"),
            AttnForm::KeySplit => format!("enc_attention_split_{storage}"),
        };
        let mut args = vec![
            Arg::Ptr(p.of(n)?),
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(mask),
        ];
        args.extend(scalars);
        self.launch(&f, l, &args)
    }

    /// A `[B, H, T, D]` operand of an attention kernel at step `i`: where it is read (its
    /// bf16 shadow when it has one), its storage, its shape and its `[batch, head, time]`
    /// strides (a head transpose read in place is time-major).
    fn heads_operand(
        &self,
        i: usize,
        o: NodeId,
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(u64, Mem, [usize; 4], [i64; 3]), String> {
        let s = interp::resolve(&self.program.graph.node(o).ty.shape, b)?;
        let [b0, h, t, d] = s[..] else {
            return Err(format!(
                "attention operands must be [B, H, T, D], not {s:?}"
            ));
        };
        let (store, time_major) = self.through_view(o);
        let sh = [b0, h, t, d];
        let (ptr, mem) = self.read(i, store, p)?;
        Ok((ptr, mem, sh, head_strides(sh, time_major)))
    }

    /// The gradients of one attention (`group`: its `attention_grad` siblings) in one pass:
    /// the row kernel writes each query row's softmax statistics into the step's scratch
    /// (and dq when wanted), then the key kernel reads them for dk and dv.
    fn attention_grad(
        &self,
        i: usize,
        a: &AttentionAttrs,
        group: &[(NodeId, AttnOperand)],
        ops: &[NodeId],
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(), String> {
        let operand = |o: usize| self.heads_operand(i, ops[o], p, b);
        let (q, k, v, dout) = (operand(0)?, operand(1)?, operand(2)?, operand(3)?);
        let suffix = match (q.1, k.1, v.1, dout.1) {
            (Mem::F32, Mem::F32, Mem::F32, Mem::F32) => "f32",
            (Mem::Bf16, Mem::Bf16, Mem::Bf16, Mem::Bf16) => "bf16",
            other => return Err(format!("internal: attention_grad over {other:?} storage")),
        };
        let out = |w: AttnOperand| -> Result<u64, String> {
            match group.iter().find(|(_, x)| *x == w) {
                Some(&(n, _)) if self.storage.mem(n) != Mem::F32 => {
                    Err("internal: an attention gradient not stored as f32".into())
                }
                Some(&(n, _)) => p.of(n),
                None => Ok(0),
            }
        };
        let (dq, dk, dv) = (
            out(AttnOperand::Q)?,
            out(AttnOperand::K)?,
            out(AttnOperand::V)?,
        );
        let bs = q.2[0];
        let call = AttnCall::of(q.2, k.2, v.2, [q.3, k.3, v.3]);
        let scalars = attention_grad_scalars(a, &call, dout.3)?;
        if call.tk == 0 && dq != 0 {
            // No keys: the row kernel writes nothing, and dq is zero.
            let bytes = bs * call.hq * call.tq * call.d * 4;
            if bytes > 0 {
                // SAFETY: the plan gave dq `bytes` bytes (f32, q's shape).
                unsafe {
                    cudarc::driver::result::memset_d8_async(dq, 0, bytes, self.stream().cu_stream())
                }
                .map_err(drv)?;
            }
        }
        let stats = p.arena
            + p.layout
                .scratch
                .get(&i)
                .ok_or_else(|| format!("internal: no attention statistics at step {i}"))?;
        let mask = match ops.get(4) {
            Some(&m) => p.of(m)?,
            None => 0,
        };
        let inputs = [q.0, k.0, v.0, dout.0, mask].map(Arg::Ptr);
        if let Some(l) = launch::attention_grad(bs, call.hq, call.tq, call.d, call.dv)? {
            let mut args = vec![Arg::Ptr(stats), Arg::Ptr(dq)];
            args.extend(inputs);
            args.extend(scalars.iter().copied());
            self.launch(&format!("enc_attention_bwd_rows_{suffix}"), l, &args)?;
        }
        if dk == 0 && dv == 0 {
            return Ok(());
        }
        if let Some(l) = launch::attention_grad(bs, call.hk, call.tk, call.d, call.dv)? {
            let mut args = vec![Arg::Ptr(dk), Arg::Ptr(dv), Arg::Ptr(stats)];
            args.extend(inputs);
            args.extend(scalars);
            self.launch(&format!("enc_attention_bwd_keys_{suffix}"), l, &args)?;
        }
        Ok(())
    }

    /// A step without a device kernel (rank-0 values): the interpreter computes it from
    /// downloaded operands and the result is uploaded into its place.
    fn on_host(&self, n: NodeId, ops: &[NodeId], p: &Ptrs, b: &Bindings) -> Result<(), String> {
        let g = &self.program.graph;
        let node = g.node(n);
        if self.capturing() {
            return Err(format!(
                "step `{}` is computed on the host",
                node.op.mnemonic()
            ));
        }
        let mut args = vec![];
        for &o in ops {
            let ty = &g.node(o).ty;
            args.push(self.download(p.of(o)?, o, interp::resolve(&ty.shape, b)?)?);
        }
        let refs: Vec<&Tensor> = args.iter().collect();
        let t = interp::eval_node(g, n, node, &refs, &HashMap::new(), &HashMap::new(), b)?;
        let bytes = host_bytes(&t, self.storage.mem(n));
        if !bytes.is_empty() {
            self.dev.stream.synchronize().map_err(drv)?;
            // SAFETY: the plan gave `n` at least `bytes.len()` bytes.
            unsafe { cudarc::driver::result::memcpy_htod_sync(p.of(n)?, &bytes) }.map_err(drv)?;
        }
        Ok(())
    }

    /// This GPU's memory bandwidth, GB/s: the best of a few device-to-device copies of
    /// 256 MiB, counting the bytes read and written. The bound a decode step (which streams
    /// every weight once) is measured against, as the host's copy bandwidth is for the CPU.
    pub fn copy_bandwidth_gbs(&self) -> Result<f64, String> {
        let bytes = 256usize << 20;
        let s = &self.dev.stream;
        let src = s.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let mut dst = s.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            s.synchronize().map_err(drv)?;
            let t = std::time::Instant::now();
            s.memcpy_dtod(&src, &mut dst).map_err(drv)?;
            s.synchronize().map_err(drv)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    }

    /// cuBLAS's rate on this GPU (n = 4096 square) at the model's precision (f32: SGEMM;
    /// bf16: bf16 operands and result, f32 accumulation), for the bench's share of peak.
    pub fn gemm_peak_gflops(&self) -> Result<f64, String> {
        let n = 4096usize;
        let s = &self.dev.stream;
        let bf16 = self.storage.precision == Precision::Bf16;
        let bytes = n * n * if bf16 { 2 } else { 4 };
        let a = s.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let bb = s.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let c = s.alloc_zeros::<u8>(bytes).map_err(drv)?;
        let (pa, pb, pc) = (a.device_ptr(s).0, bb.device_ptr(s).0, c.device_ptr(s).0);
        let call = gemm::GemmCall {
            trans_a: false,
            trans_b: false,
            m: n as i32,
            n: n as i32,
            k: n as i32,
            lda: n as i32,
            ldb: n as i32,
            ldc: n as i32,
            a_off: 0,
            b_off: 0,
            c_off: 0,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch: 1,
        };
        let t = if bf16 {
            gemm::BlasType::Bf16
        } else {
            gemm::BlasType::F32
        };
        let types = gemm::GemmTypes {
            operands: t,
            result: t,
        };
        let op = |_: bool| cublasOperation_t::CUBLAS_OP_N;
        let mut best = f64::MAX;
        for _ in 0..4 {
            s.synchronize().map_err(drv)?;
            let t = std::time::Instant::now();
            self.gemm_ex(&[call], types, [pa, pb, pc], &op)?;
            s.synchronize().map_err(drv)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * (n * n * n) as f64 / best / 1e9)
    }
}
