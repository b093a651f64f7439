"""Job settings: what to run (the job configs) and with which resources (:class:`ComputeConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.codec_runtime import CodecRuntime
from pipeline.decode_stages import OUTPUT_FORMATS
from pipeline.inputs import INPUT_FORMATS
from pipeline.where import parse_where
from sprdiff.images import DEFAULT_MAX_PIXELS
from sprdiff.run_settings import DEFAULT_TILE_SIZE

GPU_DEFAULT_BATCH_SIZE = 16  # images per codec call with GPUs, unless --batch-size says otherwise


@dataclass(frozen=True)
class ComputeConfig:
    """Where the codec runs: an actor pool of ``actors`` actors (growing up to ``max_actors`` on a cluster
    that can add them), each with one model loaded."""

    actors: int = 1
    max_actors: int | None = None  # None: a fixed pool of ``actors``
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None  # torch intra-op threads; None: one per CPU of the actor (Ray's
    # OMP_NUM_THREADS for it). More threads than reserved CPUs contend with the reading tasks: on a busy
    # core torch's OpenMP threads wait for each other, measured 1.5-25x slower on the 2-core machine.
    batch_size: int | None = None  # images per codec call; None: 1 on CPU, GPU_DEFAULT_BATCH_SIZE with GPUs
    precision: str | None = None  # of the neural stages: fp32 | bf16; None: bf16 on CUDA that runs it, else fp32
    tile_size: int | None = DEFAULT_TILE_SIZE  # px; larger images run on overlapping tiles; None: never
    compile: bool = False  # torch.compile the UNet and VAE decoder in each actor
    device: str | None = None  # None: cuda when gpus_per_actor > 0, else cpu
    io_cpus: float = 0.5  # CPUs reserved per reading/decoding (and image-writing) task
    io_tasks: int | None = None  # most reading (and writing) tasks at once; None: one per actor. Each new
    # task process imports torch (via sprdiff), seconds of CPU taken from the actors on a small machine.
    service: str | None = None  # a running codec service's name (pipeline.codec_service): its warm servers
    # run the codec instead of actors of the job's own; the pool settings above then do not apply

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"the most actors ({self.max_actors}) must be >= the fewest ({self.actors})")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0 or self.io_cpus <= 0:
            raise ValueError("gpus per actor must be >= 0, cpus per actor and io cpus > 0")
        if self.io_tasks is not None and self.io_tasks < 1:
            raise ValueError(f"io tasks must be >= 1, got {self.io_tasks}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        self.codec  # noqa: B018 (checks precision and tile size as the config is made, before any work)

    @property
    def codec(self) -> CodecRuntime:
        """What each codec actor runs with (``pipeline.codec_runtime``)."""
        batch = self.batch_size or (GPU_DEFAULT_BATCH_SIZE if self.gpus_per_actor > 0 else 1)
        return CodecRuntime(batch_size=batch, precision=self.precision, tile_size=self.tile_size,
                            compile=self.compile)

    @property
    def actor_device(self) -> str:
        return self.device or ("cuda" if self.gpus_per_actor > 0 else "cpu")

    @property
    def pool(self) -> tuple[int, int]:
        """(fewest, most) codec actors."""
        return self.actors, self.max_actors or self.actors

    @property
    def max_io_tasks(self) -> int:
        return self.io_tasks or self.pool[1]

    @property
    def actor_threads(self) -> int:
        return self.threads_per_actor or max(1, int(self.cpus_per_actor))


DEFAULT_ROWS_PER_PART = 16_384  # about 25 MB of 512x512 records: a lake-sized file, 6,100 of them per 10^8 images


@dataclass(frozen=True)
class EncodeJobConfig:
    input: str | None
    output: str
    model: str = "tiny"
    input_list: str | None = None  # a manifest of objects instead of a prefix (pipeline.inputs.manifest)
    input_format: str = "auto"
    rows_per_part: int = DEFAULT_ROWS_PER_PART
    limit: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_column: str | None = None
    key_column: str | None = None
    colour_correction: bool = True  # send each image's colour map and offset grid; about 2x the encode time
    rate: int | None = None  # the model's rate point to code at (sprdiff.rates); None: the model's default
    target_bpp: float | None = None  # instead of a rate: per image, the rate whose record is the largest within it
    retry_errors: bool = False  # re-read the archive's read_error rows and rewrite the parts holding them
    model_store: str | None = None  # the store keeping the exact weights by fingerprint; None: OUTPUT/_models/
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        if (self.input is None) == (self.input_list is None):
            raise ValueError("give exactly one of an input prefix and an input list")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if self.rows_per_part < 1:
            raise ValueError(f"rows per part must be >= 1, got {self.rows_per_part}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_pixels < 1:
            raise ValueError(f"max pixels must be >= 1, got {self.max_pixels}")
        if self.rate is not None and self.target_bpp is not None:
            raise ValueError("give a rate or a target bpp, not both: a target bpp chooses the rate per image")
        # whether the model has the rate, and the target is a positive number: pipeline.encode_job.check_rate_choice


@dataclass(frozen=True)
class DecodeJobConfig:
    input: str
    output: str
    image_format: str = "png"
    model: str | None = None  # None: each record's weights found by its fingerprint (sprdiff.model_store)
    model_stores: tuple[str, ...] = ()  # stores looked in first, before each archive's own (--model-store)
    keys: frozenset[str] | None = None
    where: str | None = None
    quality: int = 90  # webp/jpeg
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        if self.image_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.where:
            parse_where(self.where)  # a bad expression fails here, with its position
