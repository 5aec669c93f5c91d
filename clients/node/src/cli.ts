#!/usr/bin/env node
/**
 * styletransfer-node: run one style transfer job against a styletransfer server and write the
 * result. One line per event on stdout; a failed call prints its gRPC status code name and
 * details on stderr and exits non-zero (2 for INVALID_ARGUMENT and usage errors, 130 when
 * interrupted, 1 otherwise).
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { extname, join } from "node:path";
import { parseArgs } from "node:util";

import {
  type Accepted,
  type ConnectOptions,
  DEFAULT_TARGET,
  type DeepPartial,
  ImageFormat,
  Init,
  type Losses,
  Optimizer,
  type Preview,
  type Progress,
  type Result,
  StyleTransferError,
  type TransferOptions,
  connect,
  transfer,
} from "./client";

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;

const USAGE = `usage: styletransfer-node --content A.png --style B.png [--style C.png ...] --out RESULT.png [options]

Runs one job with styletransfer.v1.StyleTransfer/Transfer and writes the result image.

connection:
  --target HOST:PORT        server address (default: $STYLETRANSFER_SERVER, else ${DEFAULT_TARGET})
  --token TOKEN             bearer token (default: $STYLETRANSFER_TOKEN)
  --tls                     use TLS with the system's roots
  --tls-ca PEM              CA certificate of the server (implies --tls)
  --tls-cert PEM, --tls-key PEM   client certificate and key for mutual TLS
  --deadline-seconds S      gRPC deadline of the call; past it the job ends DEADLINE_EXCEEDED

job (unset options take the server's defaults):
  --iterations N            optimizer iterations
  --max-size N              long side of the output in pixels
  --backend NAME            pytorch or tensorflow
  --device NAME             auto, cpu, cuda or cuda:N
  --optimizer NAME          lbfgs or adam
  --learning-rate X         step size (Adam: pixel units; L-BFGS: multiplier)
  --init NAME               content, noise or style
  --seed N                  seed of the noise init
  --content-weight X, --style-weight X, --tv-weight X
  --format NAME             png, png16, jpeg or webp (default: from --out's suffix, else the server's)
  --quality N               JPEG/WebP quality 1-100
  --preview-every N         ask for a preview every N iterations
  --preview-dir DIR         write the previews there (default: only report them)
  --idempotency-key KEY     attach to the job already made under KEY instead of running another

  -h, --help                show this help`;

const FLAGS = {
  target: { type: "string" },
  content: { type: "string" },
  style: { type: "string", multiple: true },
  out: { type: "string" },
  iterations: { type: "string" },
  "max-size": { type: "string" },
  backend: { type: "string" },
  device: { type: "string" },
  optimizer: { type: "string" },
  "learning-rate": { type: "string" },
  init: { type: "string" },
  seed: { type: "string" },
  "content-weight": { type: "string" },
  "style-weight": { type: "string" },
  "tv-weight": { type: "string" },
  format: { type: "string" },
  quality: { type: "string" },
  "preview-every": { type: "string" },
  "preview-dir": { type: "string" },
  "deadline-seconds": { type: "string" },
  "idempotency-key": { type: "string" },
  token: { type: "string" },
  tls: { type: "boolean" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** The command line asks for something impossible. */
class UsageError extends Error {}

const OPTIMIZERS: Readonly<Record<string, Optimizer>> = {
  lbfgs: Optimizer.OPTIMIZER_LBFGS,
  adam: Optimizer.OPTIMIZER_ADAM,
};
const INITS: Readonly<Record<string, Init>> = {
  content: Init.INIT_CONTENT,
  noise: Init.INIT_NOISE,
  style: Init.INIT_STYLE,
};
const FORMATS: Readonly<Record<string, ImageFormat>> = {
  png: ImageFormat.IMAGE_FORMAT_PNG,
  png16: ImageFormat.IMAGE_FORMAT_PNG16,
  jpeg: ImageFormat.IMAGE_FORMAT_JPEG,
  webp: ImageFormat.IMAGE_FORMAT_WEBP,
};
const SUFFIX_FORMATS: Readonly<Record<string, ImageFormat>> = {
  ".png": ImageFormat.IMAGE_FORMAT_PNG,
  ".jpg": ImageFormat.IMAGE_FORMAT_JPEG,
  ".jpeg": ImageFormat.IMAGE_FORMAT_JPEG,
  ".webp": ImageFormat.IMAGE_FORMAT_WEBP,
};
const FORMAT_SUFFIXES: Readonly<Record<ImageFormat, string>> = {
  [ImageFormat.IMAGE_FORMAT_UNSPECIFIED]: ".img",
  [ImageFormat.IMAGE_FORMAT_PNG]: ".png",
  [ImageFormat.IMAGE_FORMAT_PNG16]: ".png",
  [ImageFormat.IMAGE_FORMAT_JPEG]: ".jpg",
  [ImageFormat.IMAGE_FORMAT_WEBP]: ".webp",
  [ImageFormat.UNRECOGNIZED]: ".img",
};

function integer(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`--${flag} wants a non-negative integer, not ${JSON.stringify(text)}`);
  }
  return Number(text);
}

function real(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) {
    throw new UsageError(`--${flag} wants a number, not ${JSON.stringify(text)}`);
  }
  return value;
}

function choice<T>(flag: string, text: string | undefined, choices: Readonly<Record<string, T>>): T | undefined {
  if (text === undefined) return undefined;
  const value = choices[text.toLowerCase()];
  if (value === undefined) {
    const known = Object.keys(choices).join(", ");
    throw new UsageError(`--${flag} must be one of ${known}, not ${JSON.stringify(text)}`);
  }
  return value;
}

function required(flag: string, value: string | undefined): string {
  if (value === undefined || value === "") throw new UsageError(`--${flag} is required`);
  return value;
}

type Values = ReturnType<typeof parseArgs<{ options: typeof FLAGS }>>["values"];

function transferOptions(values: Values, out: string): DeepPartial<TransferOptions> {
  const seed = integer("seed", values.seed);
  return {
    iterations: integer("iterations", values.iterations),
    maxSize: integer("max-size", values["max-size"]),
    backend: values.backend,
    device: values.device,
    optimizer: choice("optimizer", values.optimizer, OPTIMIZERS),
    learningRate: real("learning-rate", values["learning-rate"]),
    init: choice("init", values.init, INITS),
    seed: seed === undefined ? undefined : BigInt(seed),
    contentWeight: real("content-weight", values["content-weight"]),
    styleWeight: real("style-weight", values["style-weight"]),
    tvWeight: real("tv-weight", values["tv-weight"]),
    outputFormat: choice("format", values.format, FORMATS) ?? SUFFIX_FORMATS[extname(out).toLowerCase()],
    outputQuality: integer("quality", values.quality),
    previewEvery: integer("preview-every", values["preview-every"]),
  };
}

async function optionalFile(path: string | undefined): Promise<Buffer | undefined> {
  return path === undefined ? undefined : readFile(path);
}

/** Losses span many orders of magnitude: fixed point near 1, exponent notation otherwise. */
function number(value: number): string {
  const magnitude = Math.abs(value);
  return magnitude >= 1e4 || (magnitude > 0 && magnitude < 1e-2) ? value.toExponential(3) : value.toFixed(3);
}

function losses(l: Losses | undefined): string {
  if (l === undefined) return "";
  return `total ${number(l.total)}  content ${number(l.content)}  style ${number(l.style)}  tv ${number(l.tv)}`;
}


function formatName(format: ImageFormat): string {
  return ImageFormat[format].replace("IMAGE_FORMAT_", "");
}

function describeAccepted(a: Accepted): string {
  const o = a.options;
  return (
    `accepted job ${a.jobId}  backend ${a.backend}  device ${a.device}  output ${a.width}x${a.height}` +
    (o === undefined ? "" : `  iterations ${o.iterations ?? "?"}  optimizer ${Optimizer[o.optimizer]}`)
  );
}

function describeProgress(p: Progress): string {
  return `iteration ${p.iteration}/${p.totalIterations}  ${losses(p.losses)}  ${p.elapsedSeconds.toFixed(2)} s`;
}

function describeResult(r: Result, out: string): string {
  const image = r.image;
  const t = r.timings;
  return (
    `result ${image?.width ?? 0}x${image?.height ?? 0}` +
    ` ${formatName(image?.format ?? ImageFormat.IMAGE_FORMAT_UNSPECIFIED)}` +
    ` ${image?.data.length ?? 0} bytes -> ${out}  iterations ${r.iterations}` +
    (t === undefined ? "" : `  total ${t.totalSeconds.toFixed(2)} s  ${t.iterationMeanMs.toFixed(1)} ms/iteration`)
  );
}

async function run(argv: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...argv], options: FLAGS, allowPositionals: false, strict: true });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const out = required("out", values.out);
  const styles = values.style ?? [];
  if (styles.length === 0) throw new UsageError("--style is required (repeat it to blend several styles)");
  const options = transferOptions(values, out);
  const deadlineSeconds = real("deadline-seconds", values["deadline-seconds"]);
  const previewDir = values["preview-dir"];
  const content = await readFile(required("content", values.content));
  const styleImages = await Promise.all(styles.map((path) => readFile(path)));

  const connectOptions: ConnectOptions = {
    target: values.target ?? process.env.STYLETRANSFER_SERVER ?? DEFAULT_TARGET,
    token: values.token ?? process.env.STYLETRANSFER_TOKEN,
    tls: values.tls ?? false,
    tlsCa: await optionalFile(values["tls-ca"]),
    tlsCert: await optionalFile(values["tls-cert"]),
    tlsKey: await optionalFile(values["tls-key"]),
  };
  if (previewDir !== undefined) await mkdir(previewDir, { recursive: true });

  const connection = connect(connectOptions);
  const abort = new AbortController();
  let interrupted = false;
  const onSigint = (): void => {
    interrupted = true;
    abort.abort();
  };
  process.once("SIGINT", onSigint);
  try {
    const events = transfer(
      connection,
      { content, styles: styleImages, options, idempotencyKey: values["idempotency-key"] },
      { deadlineSeconds, signal: abort.signal },
    );
    for await (const { event } of events) {
      switch (event?.$case) {
        case "accepted":
          console.log(describeAccepted(event.value));
          break;
        case "progress":
          console.log(describeProgress(event.value));
          break;
        case "preview":
          console.log(await savePreview(event.value, previewDir));
          break;
        case "heartbeat":
          console.log("waiting (heartbeat)");
          break;
        case "resumed":
          console.log(
            `resumed: from_iteration=${event.value.fromIteration} attempt=${event.value.attempt} ` +
              `replica=${event.value.replica} reason=${event.value.reason}`,
          );
          break;
        case "result":
          await writeFile(out, event.value.image?.data ?? Buffer.alloc(0));
          console.log(describeResult(event.value, out));
          return 0;
        case undefined:
          break;
      }
    }
    console.error("error: the stream ended without a result");
    return EXIT_FAILURE;
  } catch (error: unknown) {
    if (error instanceof StyleTransferError) {
      console.error(`error: ${error.codeName}: ${error.details}`);
      if (interrupted) return EXIT_INTERRUPTED;
      return error.codeName === "INVALID_ARGUMENT" ? EXIT_USAGE : EXIT_FAILURE;
    }
    throw error;
  } finally {
    process.removeListener("SIGINT", onSigint);
    connection.close();
  }
}

async function savePreview(preview: Preview, dir: string | undefined): Promise<string> {
  const image = preview.image;
  const size = `${image?.width ?? 0}x${image?.height ?? 0}`;
  const line = `preview iteration ${preview.iteration}  ${size}  ${image?.data.length ?? 0} bytes`;
  if (dir === undefined || image === undefined) return line;
  const path = join(dir, `preview-${String(preview.iteration).padStart(6, "0")}${FORMAT_SUFFIXES[image.format]}`);
  await writeFile(path, image.data);
  return `${line} -> ${path}`;
}

/** What node:util's parseArgs throws for an unknown flag or a missing value. */
function isParseArgsError(error: unknown): boolean {
  return error instanceof TypeError && "code" in error && String(error.code).startsWith("ERR_PARSE_ARGS");
}

function main(): void {
  run(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      const usage = error instanceof UsageError || isParseArgsError(error);
      const message = error instanceof Error ? error.message : String(error);
      console.error(`error: ${message}`);
      if (usage) console.error("(see --help)");
      process.exitCode = usage ? EXIT_USAGE : EXIT_FAILURE;
    },
  );
}

main();
