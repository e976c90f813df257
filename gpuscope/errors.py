"""Errors gpuscope raises on bad input: each says what is wrong in words a person acts on."""


class GpuscopeError(Exception):
    """Base of every error the CLI reports as a one-line message (exit status 2)."""


class RingError(GpuscopeError):
    """A ring file cannot be trusted."""


class NotARingError(RingError):
    """The file is not a gpuscope ring (wrong magic, or too short to hold a header)."""


class RingNotReadyError(NotARingError):
    """No ring at the path yet, or its writer has not finished the header: a lazily created ring is still coming."""


class RingVersionError(RingError):
    """The ring was written by another ABI version of the hooks."""


class CorruptRingError(RingError):
    """The header holds impossible sizes or offsets, or the file is truncated."""


class TraceError(GpuscopeError):
    """A path that is not a readable gpuscope trace: no metadata, or metadata or tables that break the format."""


class QueryError(GpuscopeError):
    """SQL over traces cannot run: no trace to query, a statement that is not a query, or an error in the query."""


class NativeBuildError(GpuscopeError):
    """Compiling gpuscope's native code failed."""


class ModelError(GpuscopeError):
    """A model could not be provided."""


class ModelFetchError(ModelError):
    """The model's packages could not be fetched from the package registry."""


class ModelVerificationError(ModelError):
    """An assembled model does not have the expected size or sha256."""


class ModelShapeError(ModelError):
    """A synthetic model shape is unknown, malformed or impossible."""


class EngineError(GpuscopeError):
    """The patched engine (its source, hook patches or builds) has a problem."""


class EngineSourceError(EngineError):
    """The pinned engine source cannot be fetched, verified or extracted."""


class PatchError(EngineError):
    """A hook patch series or a user patch cannot be applied to an engine tree."""


class EngineBuildError(EngineError):
    """Configuring or compiling an engine build failed."""


class EngineNotFoundError(EngineError):
    """No engine build (or program in it) matches what was asked for."""


class SessionError(GpuscopeError):
    """An in-process engine session could not do what was asked."""


class SplitConfigError(SessionError):
    """A split configuration is invalid, or does not fit the devices or the model it is used with."""


class BindingMismatchError(SessionError):
    """The build's C API (llama.h structs) differs from what the Python bindings expect."""


class EngineConflictError(SessionError):
    """This process already loaded another libllama (a process can hold one)."""


class RpcServerError(SessionError):
    """A local ggml-rpc-server did not start or does not answer."""


class DecodeError(SessionError):
    """llama_decode refused a batch."""


class EngineCrashedError(SessionError):
    """The engine's worker process died; its trace up to the crash is still readable."""


class CollectorError(GpuscopeError):
    """A collector beside the hooks (GPU kernels, native stacks, imported profiles) could not run or read its input."""


class CollectorUnavailableError(CollectorError):
    """What a collector needs is missing here (torch, a CUDA/ROCm build of torch, py-spy, a trace processor)."""


class CuptiConflictError(CollectorError):
    """Another CUPTI subscriber (Nsight Systems, Nsight Compute, ...) holds the GPU activity API."""


class AttachPermissionError(CollectorError):
    """The stack sampler may not attach to the target process (ptrace permission)."""


class TargetExitedError(CollectorError):
    """The process the stack sampler was to watch exited before it could be sampled."""


class ProfileFormatError(CollectorError):
    """An imported profile (rocprofv3 CSV or rocpd database, Kineto trace) does not have the expected layout."""


class ReportError(GpuscopeError):
    """A report, a notebook or a live dashboard could not be made."""


class StaticExportUnavailableError(ReportError):
    """PNG / PDF export needs kaleido and a Chrome or Chromium browser, and one of them is missing."""


class MissingExtraError(GpuscopeError):
    """An optional part of gpuscope is used without the extra that installs it."""


class NotPatchedError(GpuscopeError):
    """The engine carries no gpuscope hooks."""
