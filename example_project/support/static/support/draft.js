// Streams the reply draft into the page as the model writes it (Server-Sent Events over fetch).
"use strict";
document.getElementById("draft-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target, result = document.getElementById("result");
  const text = document.getElementById("answer-text"), panel = document.getElementById("routing-panel");
  document.getElementById("result-title").textContent = "Reply draft";
  text.textContent = ""; panel.textContent = "Streaming…"; result.hidden = false;
  form.querySelector("button").disabled = true;
  try {
    const response = await fetch(form.action, {method: "POST", body: new FormData(form), headers: {Accept: "text/event-stream"}});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n"); buffer = events.pop();
      for (const raw of events) {
        const kind = (raw.match(/^event: (.*)$/m) || [])[1], data = JSON.parse((raw.match(/^data: (.*)$/m) || [])[1] || "{}");
        if (kind === "token") text.textContent += data.text;
        else if (kind === "done") panel.innerHTML = data.html;
        else if (kind === "error") panel.textContent = data.message;
      }
    }
  } catch (error) {
    panel.textContent = `The draft failed: ${error.message}`;
  } finally {
    form.querySelector("button").disabled = false;
  }
});
