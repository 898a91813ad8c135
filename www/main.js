// Probes WebGPU through the wasm engine and shows the adapter, or says clearly why it cannot run.
const status = document.getElementById('status');
const info = document.getElementById('info');

async function main() {
  if (!('gpu' in navigator)) {
    status.textContent = 'This browser has no WebGPU. Use Chrome or Edge 113+, Safari 26, or Firefox 141+ on Windows.';
    status.className = 'error';
    return;
  }
  try {
    const wasm = await import('./pkg/janusflow.js');
    await wasm.default();
    const adapter = await wasm.adapterInfo();
    status.textContent = `WebGPU ready on ${adapter.name || 'an unnamed adapter'}.`;
    info.textContent = JSON.stringify(adapter, null, 2);
    info.hidden = false;
  } catch (e) {
    status.textContent = `Could not start: ${e.message || e}`;
    status.className = 'error';
  }
}
main();
