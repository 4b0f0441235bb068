// Transcribe a dropped or chosen audio file with a LiteWhisper repo through transformers.js.
//
// Query parameters (all optional):
//   model   Hub repo id or, with local=1, a folder name under ./models/ (required)
//   local   1: load the model from ./models/MODEL/ on this server instead of the Hugging Face Hub
//   dtype   q8 (default, the _quantized files), fp32 or fp16
//   lib     URL of the transformers.js bundle (default: jsDelivr); wasm: folder of ONNX Runtime Web's .wasm files
const params = new URLSearchParams(location.search);
const MODEL = params.get('model');
const DTYPE = params.get('dtype') ?? 'q8';
const LIB = params.get('lib') ?? 'https://cdn.jsdelivr.net/npm/@huggingface/transformers@4.3.1';

const status = document.getElementById('status');
const progress = document.getElementById('progress');
const transcript = document.getElementById('transcript');
document.getElementById('model-id').textContent = MODEL;
document.getElementById('dtype').textContent = DTYPE;

if (!MODEL) {
    status.textContent = 'Add ?model=ORG/NAME to the address: a LiteWhisper repo with an onnx/ folder (lite-whisper export-onnx).';
    document.body.dataset.state = 'error';
    throw new Error('no model given');
}
const { env, pipeline } = await import(LIB);
if (params.get('local') === '1') {
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    env.localModelPath = new URL('models/', location.href).pathname;  // a path: transformers.js fetches it as a local file
}
if (params.get('wasm')) {
    env.backends.onnx.wasm.wasmPaths = new URL(params.get('wasm'), location.href).href;
}

// Loading progress: transformers.js reports bytes per file; show the total over every file seen so far.
const files = new Map();
function onProgress(event) {
    if (event.status === 'progress' && event.total) {
        files.set(event.file, [event.loaded, event.total]);
        const [loaded, total] = [...files.values()].reduce(([a, b], [c, d]) => [a + c, b + d], [0, 0]);
        progress.value = (100 * loaded) / total;
        status.textContent = `Loading the model… ${(loaded / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`;
    }
}

let asr;
try {
    asr = await pipeline('automatic-speech-recognition', MODEL, { dtype: DTYPE, progress_callback: onProgress });
} catch (error) {
    status.textContent = `Could not load ${MODEL}: ${error.message}`;
    document.body.dataset.state = 'error';
    throw error;
}
progress.value = 100;
status.textContent = 'Ready: drop or choose an audio file.';
document.body.dataset.state = 'ready';

async function decode(file) {
    // Whisper wants 16 kHz mono: let the browser's decoder resample.
    const context = new AudioContext({ sampleRate: 16000 });
    try {
        const audio = await context.decodeAudioData(await file.arrayBuffer());
        return audio.getChannelData(0);
    } finally {
        await context.close();
    }
}

async function transcribe(file) {
    document.body.dataset.state = 'busy';
    transcript.textContent = '';
    status.textContent = `Transcribing ${file.name}…`;
    try {
        const audio = await decode(file);
        const start = performance.now();
        const output = await asr(audio, { chunk_length_s: audio.length > 30 * 16000 ? 30 : 0 });
        const seconds = (performance.now() - start) / 1000;
        transcript.textContent = output.text.trim();
        status.textContent = `${file.name}: ${(audio.length / 16000).toFixed(1)} s of audio in ${seconds.toFixed(1)} s.`;
        document.body.dataset.state = 'done';
    } catch (error) {
        status.textContent = `Could not transcribe ${file.name}: ${error.message}`;
        document.body.dataset.state = 'error';
    }
}

document.getElementById('file').addEventListener('change', (event) => {
    if (event.target.files.length) transcribe(event.target.files[0]);
});
const drop = document.getElementById('drop');
drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    if (event.dataTransfer.files.length) transcribe(event.dataTransfer.files[0]);
});
