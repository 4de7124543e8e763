// The Vercel AI SDK against Sluice: `openai(model)` (the Responses API by
// default) — generateText, streamText, and a multi-step tool call. Prints one
// JSON line for the Python test to check. BASE is Sluice's /v1 URL.
import { generateText, streamText, tool, stepCountIs } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { z } from 'zod';

const model = process.argv[2];
const openai = createOpenAI({ baseURL: process.env.BASE, apiKey: 'unused' });

const generated = await generateText({ model: openai(model), prompt: 'Say hello' });
const streamed = streamText({ model: openai(model), prompt: 'Say hello' });
let text = '';
for await (const delta of streamed.textStream) text += delta;
const calls = [];
const withTools = await generateText({
  model: openai(model),
  prompt: 'What is the weather in Paris? Use get_weather.',
  tools: {
    get_weather: tool({
      description: 'Weather in a city',
      inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => { calls.push(city); return `22 C in ${city}`; },
    }),
  },
  stopWhen: stepCountIs(3),
});
console.log(JSON.stringify({
  generated: generated.text,
  usage: generated.usage,
  streamed: text,
  calls,
  steps: withTools.steps.length,
  final: withTools.text,
}));
