// Payments: plans, Stripe Checkout for subscriptions, the signed Stripe webhook, and the user's
// subscription (view and cancel). Contract: docs/api/payments.md.
import { Module } from '@nestjs/common';
import { PaymentsController } from './payments.controller';
import { PaymentsService } from './payments.service';
import { StripeClient } from './stripe.client';
import { WebhookService } from './webhook.service';

@Module({
  controllers: [PaymentsController],
  providers: [PaymentsService, StripeClient, WebhookService],
})
export class PaymentsModule {}
