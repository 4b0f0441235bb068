// Transcribe audio files with an exported (Lite)Whisper folder through transformers.js in Node, offline.
//
//   node transcribe.mjs MODEL_DIR [--dtype fp32|q8|fp16] [--threads N] FILE.wav [FILE.wav ...]
//
// MODEL_DIR holds config.json, the tokenizer/processor files and onnx/ (as `lite-whisper export-onnx` writes
// it). Audio must be 16 kHz mono WAV (float32 or 16-bit PCM); the Python test converts the shared FLAC clips.
// Prints one JSON object: {"dtype", "load_seconds", "results": [{"file", "text", "seconds"}]}. Greedy decoding
// without timestamps, as `lite-whisper eval` decodes.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { env, pipeline } from '@huggingface/transformers';

function readWav(file) {
    const buffer = readFileSync(file);
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    if (buffer.toString('ascii', 0, 4) !== 'RIFF' || buffer.toString('ascii', 8, 12) !== 'WAVE') {
        throw new Error(`${file}: not a WAV file`);
    }
    let offset = 12, format = null, data = null;
    while (offset + 8 <= buffer.length) {
        const id = buffer.toString('ascii', offset, offset + 4);
        const size = view.getUint32(offset + 4, true);
        if (id === 'fmt ') {
            format = { code: view.getUint16(offset + 8, true), channels: view.getUint16(offset + 10, true),
                       rate: view.getUint32(offset + 12, true), bits: view.getUint16(offset + 22, true) };
        } else if (id === 'data') {
            data = { start: offset + 8, size };
        }
        offset += 8 + size + (size % 2);
    }
    if (!format || !data) throw new Error(`${file}: WAV without fmt or data chunk`);
    if (format.rate !== 16000 || format.channels !== 1) {
        throw new Error(`${file}: need 16 kHz mono, got ${format.rate} Hz, ${format.channels} channel(s)`);
    }
    const count = data.size / (format.bits / 8);
    const samples = new Float32Array(count);
    for (let i = 0; i < count; i++) {
        const at = data.start + i * (format.bits / 8);
        samples[i] = format.code === 3 ? view.getFloat32(at, true) : view.getInt16(at, true) / 32768;
    }
    return samples;
}

const args = process.argv.slice(2);
const option = (name, fallback) => {
    const index = args.indexOf(name);
    if (index < 0) return fallback;
    const [value] = args.splice(index, 2).slice(1);
    return value;
};
const dtype = option('--dtype', 'fp32');
const threads = Number(option('--threads', '0'));
const [modelDir, ...files] = args;
if (!modelDir || files.length === 0) {
    console.error('usage: node transcribe.mjs MODEL_DIR [--dtype fp32|q8|fp16] [--threads N] FILE.wav ...');
    process.exit(2);
}

env.allowRemoteModels = false;  // never reach for the Hub: the model is the local folder
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(modelDir)) + path.sep;
const sessionOptions = threads > 0 ? { intraOpNumThreads: threads, interOpNumThreads: 1 } : {};

const loadStart = performance.now();
const asr = await pipeline('automatic-speech-recognition', path.basename(path.resolve(modelDir)), {
    dtype, device: 'cpu', session_options: sessionOptions,
});
const loadSeconds = (performance.now() - loadStart) / 1000;
const results = [];
for (const file of files) {
    const audio = readWav(file);
    const start = performance.now();
    const output = await asr(audio, { return_timestamps: false, num_beams: 1, do_sample: false });
    results.push({ file: path.basename(file), text: output.text.trim(), seconds: (performance.now() - start) / 1000,
                   audio_seconds: audio.length / 16000 });
}
console.log(JSON.stringify({ dtype, load_seconds: loadSeconds, results }));
