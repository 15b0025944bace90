// edgefaas — renders /openapi.json as a page: one section per operation with its
// parameters, body and responses. No framework, no network but this node.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return Object.assign({ title: name }, doc.components.schemas[name]);
  }
  return schema || {};
}

function schemaText(doc, schema) {
  const seen = new Set();
  const expand = (value) => {
    if (Array.isArray(value)) return value.map(expand);
    if (value && typeof value === "object") {
      if (value.$ref) {
        const name = value.$ref.split("/").pop();
        if (seen.has(name)) return name;
        seen.add(name);
        const found = expand(doc.components.schemas[name]);
        seen.delete(name);
        return found;
      }
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expand(v)]));
    }
    return value;
  };
  return JSON.stringify(expand(schema), null, 2);
}

function parameters(op) {
  const rows = (op.parameters || []).map((p) =>
    el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "required" : "optional"),
      el("td", {}, p.description || (p.schema && p.schema.pattern) || "")));
  if (!rows.length) return null;
  return el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
    el("th", {}, ""), el("th", {}, "")), ...rows);
}

function body(doc, op) {
  if (!op.requestBody) return null;
  const [media, content] = Object.entries(op.requestBody.content)[0];
  const title = resolve(doc, content.schema).title || media;
  return el("details", {}, el("summary", {}, `body: ${title} (${media})`),
    el("pre", {}, schemaText(doc, content.schema)));
}

function responses(doc, op) {
  const rows = Object.entries(op.responses).map(([status, answer]) => {
    const media = answer.content ? Object.keys(answer.content).join(", ") : "";
    const headers = answer.headers ? Object.keys(answer.headers).join(", ") : "";
    return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, answer.description),
      el("td", {}, media), el("td", {}, headers));
  });
  return el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, ""),
    el("th", {}, "type"), el("th", {}, "headers")), ...rows);
}

function render(doc) {
  document.getElementById("info").textContent =
    `${doc.info.title} — OpenAPI ${doc.openapi}. ${doc.info.description}`;
  const toc = document.getElementById("toc");
  const main = document.getElementById("paths");
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (path.includes("function/") && !["post", "get"].includes(method)) continue;
      const id = `${method}-${path}`.replace(/[^A-Za-z0-9]+/g, "-");
      const auth = (op.security || []).map((s) => Object.keys(s)[0]).join(" or ") || "open";
      toc.append(el("a", { href: `#${id}` }, `${method.toUpperCase()} ${path}`));
      main.append(el("section", { class: "op", id },
        el("span", { class: "tag" }, `${(op.tags || [""])[0]} · ${auth}`),
        el("h2", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), path),
        el("p", {}, op.summary, op.description ? el("br") : null, op.description || null),
        parameters(op), body(doc, op), responses(doc, op)));
    }
  }
}

fetch("/openapi.json")
  .then((answer) => answer.json())
  .then(render)
  .catch((error) => {
    document.getElementById("info").textContent = `Could not load /openapi.json: ${error}`;
  });
